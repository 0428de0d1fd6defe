"""Step 4, load: stage the missing rows with ADBC bulk ingest (COPY) and merge them in one
statement. Runs inside the caller's transaction and never commits by itself."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import adbc_driver_manager
import polars as pl

from engine.store import db
from engine.store.schema import CALCULATIONS, KEY_COLUMNS

STAGE = "engine_stage"
STAGE_DIFFICULTY = "engine_stage_difficulty"
UNIQUE_VIOLATION = "23505"
_KEY = ", ".join(KEY_COLUMNS)
_COLUMNS = f"{_KEY}, bitcoin_mined, difficulty"

# The day's difficulty is staged once per date, not once per row: numeric is the costly
# type to COPY, and a month has ~30 dates against ~50k rows.
CREATE_STAGE = f"""
CREATE TEMPORARY TABLE {STAGE} (
    settlement_date date NOT NULL,
    settlement_period integer NOT NULL,
    farm_id text NOT NULL,
    miner_model text NOT NULL,
    bitcoin_mined numeric NOT NULL
) ON COMMIT DROP
"""
CREATE_STAGE_DIFFICULTY = f"""
CREATE TEMPORARY TABLE {STAGE_DIFFICULTY} (
    settlement_date date PRIMARY KEY,
    difficulty numeric NOT NULL
) ON COMMIT DROP
"""
#: The staged rows as they will be inserted.
STAGED = f"{STAGE} JOIN {STAGE_DIFFICULTY} USING (settlement_date)"

# With the unique index a plain insert: the index rejects a key another writer inserted since
# the extract (`KeyConflict`: the month is read again). Sorted input keeps the index
# maintenance on neighbouring pages.
MERGE = f"""
INSERT INTO {CALCULATIONS} ({_COLUMNS}, calculated_at)
SELECT {_COLUMNS}, localtimestamp FROM {STAGED} ORDER BY {_KEY}
"""

# Without it (duplicates block the index), writers are held off for the transaction instead.
LOCK_TARGET = f"LOCK TABLE {CALCULATIONS} IN SHARE ROW EXCLUSIVE MODE"
MERGE_NOT_EXISTS = f"""
INSERT INTO {CALCULATIONS} ({_COLUMNS}, calculated_at)
SELECT {_COLUMNS}, localtimestamp FROM {STAGE} s JOIN {STAGE_DIFFICULTY} USING (settlement_date)
WHERE NOT EXISTS (
    SELECT 1 FROM {CALCULATIONS} t
    WHERE ({", ".join(f"t.{c}" for c in KEY_COLUMNS)}) = ({", ".join(f"s.{c}" for c in KEY_COLUMNS)})
)
ORDER BY {_KEY}
"""


@dataclass(frozen=True)
class LoadResult:
    staged: int
    inserted: int

    @property
    def already_present(self) -> int:
        """Staged rows another writer inserted between the extract and the merge."""
        return self.staged - self.inserted

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "already_present": self.already_present}


class KeyConflict(Exception):
    """Another writer inserted one of the keys; the transaction must be rolled back."""


def hold_off_writers(cursor: db.Cursor) -> None:
    """Without the unique index, keep other writers of the calculations table waiting until
    the transaction ends (they could insert a key between the check and the insert)."""
    cursor.execute(LOCK_TARGET)


def load_missing(cursor: db.Cursor, missing: Iterable[pl.DataFrame], *,
                 unique_key: bool) -> LoadResult:
    """Insert the `missing` rows (expected-rows schema; one frame per slice of the month, each
    slice's days its own) into the calculations table; return the counts.

    `unique_key` says whether the unique index exists (see `schema.has_unique_key`); without
    it the caller holds writers off first (`hold_off_writers`). Raises `KeyConflict` when a key
    is already present.
    """
    staged = 0
    for part in missing:
        if part.is_empty():
            continue
        if not staged:
            cursor.execute(CREATE_STAGE)
            cursor.execute(CREATE_STAGE_DIFFICULTY)
        staged += int(cursor.adbc_ingest(STAGE, part.select(*KEY_COLUMNS, "bitcoin_mined").to_arrow(),
                                         mode="append", temporary=True))
        days = part.select("settlement_date", "difficulty").unique()
        cursor.adbc_ingest(STAGE_DIFFICULTY, days.to_arrow(), mode="append", temporary=True)
    if not staged:
        return LoadResult(0, 0)
    if not unique_key:
        return LoadResult(int(staged), db.execute(cursor, MERGE_NOT_EXISTS))
    try:
        return LoadResult(int(staged), db.execute(cursor, MERGE))
    except adbc_driver_manager.IntegrityError as error:
        if getattr(error, "sqlstate", None) == UNIQUE_VIOLATION:
            raise KeyConflict(str(error)) from error
        raise
