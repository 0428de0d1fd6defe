"""Undo: what a run changed, kept under `data/undo/<run id>/`, and putting it back.

Every run that writes leaves, before it commits:
- `manifest.json`: the month, the formula, the fix, when the write transaction ran
  (`applied_at`, the `calculated_at` of every row it wrote) and how many rows it inserted,
  updated and deleted;
- `inserted.parquet`: the keys it inserted (a hard link to the month's `missing` diff);
- `before.parquet`: the exact before-image of every row it updated or deleted (numeric as
  text, so every digit and the scale come back).

`restore` runs in the caller's transaction: it refuses unless every row is as the run left it
(an updated row still holds the run's values and `calculated_at`, a deleted id is still
absent, each inserted key is still the run's row), then deletes the inserted rows, puts the
updated ones back and re-inserts the deleted ones with their ids. `check` makes the same
checks and changes nothing, so several runs can be checked before any is undone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import adbc_driver_manager
import polars as pl

from engine.errors import InputError, UndoRefused
from engine.formula import KEY
from engine.months import Month
from engine.store import db, schema
from engine.store.paths import check_input, environment_problem, write_parquet, write_text
from engine.store.schema import CALCULATIONS, DEFAULT_SCHEMA, KEY_COLUMNS, sql

MANIFEST, BEFORE, INSERTED = "manifest.json", "before.parquet", "inserted.parquet"
ROWS, KEYS = "engine_undo_rows", "engine_undo_inserted"
_KEY = ", ".join(KEY_COLUMNS)
_SAME_KEY = " AND ".join(f"c.{k} = i.{k}" for k in KEY_COLUMNS)
_SAME_KEY_AS_ROW = " AND ".join(f"c.{k} = u.{k}" for k in KEY_COLUMNS)

NOW = "SELECT localtimestamp"
CREATE_ROWS = f"""
CREATE TEMPORARY TABLE {ROWS} (
    id bigint PRIMARY KEY, action text NOT NULL, settlement_date date NOT NULL,
    settlement_period integer NOT NULL, farm_id text NOT NULL, miner_model text NOT NULL,
    bitcoin_mined text NOT NULL, difficulty text NOT NULL, calculated_at timestamp,
    bitcoin_after text, difficulty_after text
) ON COMMIT DROP
"""
CREATE_KEYS = f"""
CREATE TEMPORARY TABLE {KEYS} (
    settlement_date date NOT NULL, settlement_period integer NOT NULL, farm_id text NOT NULL,
    miner_model text NOT NULL
) ON COMMIT DROP
"""
# $1: the run's applied_at.
LOCK_UPDATED = f"""
SELECT c.id FROM {CALCULATIONS} c JOIN {ROWS} u USING (id, {_KEY})
WHERE u.action = 'update' AND c.calculated_at = $1
  AND c.bitcoin_mined = u.bitcoin_after::numeric AND c.difficulty = u.difficulty_after::numeric
FOR UPDATE OF c
"""
DELETED_BACK = f"SELECT count(*) FROM {CALCULATIONS} c JOIN {ROWS} u USING (id) WHERE u.action = 'delete'"
# Deleted rows whose key is taken again (the unique key index would refuse them).
DELETED_KEY_TAKEN = f"""
SELECT count(*) FROM {ROWS} u WHERE u.action = 'delete'
  AND EXISTS (SELECT 1 FROM {CALCULATIONS} c WHERE {_SAME_KEY_AS_ROW})
"""
ANALYZE_KEYS = f"ANALYZE {KEYS}"
# $1: the run's applied_at.
INSERTED_LEFT = f"""
SELECT count(*) FROM {CALCULATIONS} c JOIN {KEYS} i ON {_SAME_KEY} WHERE c.calculated_at = $1
"""
# With a bound parameter the driver cannot tell the rows affected: the statement counts them.
DELETE_INSERTED = f"""
WITH gone AS (
    DELETE FROM {CALCULATIONS} c USING {KEYS} i WHERE {_SAME_KEY} AND c.calculated_at = $1
    RETURNING 1)
SELECT count(*) FROM gone
"""
RESTORE_UPDATED = f"""
UPDATE {CALCULATIONS} c SET bitcoin_mined = u.bitcoin_mined::numeric,
    difficulty = u.difficulty::numeric, calculated_at = u.calculated_at
FROM {ROWS} u WHERE c.id = u.id AND u.action = 'update'
"""
RESTORE_DELETED = f"""
INSERT INTO {CALCULATIONS} (id, {_KEY}, bitcoin_mined, difficulty, calculated_at)
SELECT id, {_KEY}, bitcoin_mined::numeric, difficulty::numeric, calculated_at
FROM {ROWS} WHERE action = 'delete' ORDER BY id
"""
# Every restored row, compared as text with its before-image: 0 when exact.
NOT_RESTORED = f"""
SELECT count(*) FROM {ROWS} u LEFT JOIN {CALCULATIONS} c USING (id)
WHERE c.id IS NULL OR (c.settlement_date, c.settlement_period, c.farm_id, c.miner_model,
      c.bitcoin_mined::text, c.difficulty::text, c.calculated_at)
   IS DISTINCT FROM (u.settlement_date, u.settlement_period, u.farm_id, u.miner_model,
      u.bitcoin_mined, u.difficulty, u.calculated_at)
"""
RUN_ROW = """
SELECT month, status, formula, undone_by, undo_of FROM {engine}.reconciliation_runs WHERE id = $1 FOR UPDATE
"""
LINK = """
UPDATE {engine}.reconciliation_runs SET undone_by = CASE WHEN id = $1 THEN $2 END,
    undo_of = CASE WHEN id = $2 THEN $1 ELSE undo_of END
WHERE id IN ($1, $2)
"""
#: Run statuses whose write transaction committed.
UNDOABLE = ("loaded", "verified", "unverified", "interrupted")


@dataclass(frozen=True)
class UndoRecord:
    """What one run wrote: enough to check the table still holds it and to put back the rest."""

    run_id: int
    month: Month
    formula: str
    applied_at: datetime
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    fix: tuple[str, ...] = ()
    summary_days: tuple[date, ...] | None = None  # the summaries it refreshed (None: the month)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.update(month=str(self.month), applied_at=self.applied_at.isoformat(),
                      fix=list(self.fix), summary_days=None if self.summary_days is None
                      else [d.isoformat() for d in self.summary_days])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UndoRecord:
        summary_days = values.get("summary_days")
        return cls(int(values["run_id"]), Month.parse(values["month"]), values["formula"],
                   datetime.fromisoformat(values["applied_at"]), int(values["inserted"]),
                   int(values["updated"]), int(values["deleted"]), tuple(values["fix"]),
                   None if summary_days is None else tuple(map(date.fromisoformat, summary_days)))


def directory(undo_dir: Path, run_id: int) -> Path:
    """The folder of run `run_id`'s undo image in this database's `undo_dir`
    (`data/undo/<database>/`, see `Session.undo_dir`)."""
    return undo_dir / str(run_id)


def applied_at(cursor: db.Cursor) -> datetime:
    """The transaction's `localtimestamp`: the `calculated_at` of every row it writes."""
    value = db.fetch_all(cursor, NOW)[0][0]
    assert isinstance(value, datetime)
    return value


def write_record(undo_dir: Path, record: UndoRecord, *, inserted: Sequence[Path],
                 before: pl.DataFrame) -> Path:
    """Write the run's undo record (call it before the transaction commits); return its folder.

    `inserted` are the Parquet files of the rows staged for insert, one per slice of the month
    (hard-linked, not copied): `inserted.parquet`, then `inserted-1.parquet`, ….
    """
    folder = directory(undo_dir, record.run_id)
    try:
        shutil.rmtree(folder, ignore_errors=True)  # an earlier, recreated database had this id
        folder.mkdir(parents=True)
        for number, source in enumerate(inserted):
            target = folder / _inserted_name(number)
            try:
                os.link(source, target)
            except OSError:  # another file system
                shutil.copyfile(source, target)
    except OSError as error:
        raise environment_problem(error, folder, "write the undo record in") from None
    if before.height:
        write_parquet(before, folder / BEFORE)
    write_text(folder / MANIFEST, json.dumps(record.to_dict(), indent=2) + "\n")
    return folder


def read_record(undo_dir: Path, run_id: int) -> tuple[UndoRecord, pl.DataFrame, pl.DataFrame]:
    """The run's record, before-images and inserted keys. Raises `UndoRefused` without one or
    with a damaged one.

    Images of earlier versions lie in `data/undo/<run id>/`, shared by every database: they are
    still read (`restore` refuses unless the rows are exactly as that run left them)."""
    folder = directory(undo_dir, run_id)
    if not (folder / MANIFEST).exists() and (directory(undo_dir.parent, run_id) / MANIFEST).exists():
        folder = directory(undo_dir.parent, run_id)
    if not (folder / MANIFEST).exists():
        raise UndoRefused(f"run {run_id} has no undo record in {folder} (a dry run, a run that "
                          "changed nothing, or another data directory)")
    damaged = f"the undo record of run {run_id} in {folder} is damaged"
    inserted = sorted(folder.glob("inserted*.parquet"), key=lambda p: (len(p.name), p.name))
    for name in (MANIFEST, BEFORE, *(p.name for p in inserted)):
        if (folder / name).exists():
            try:
                check_input(folder / name, "undo file")
            except InputError as error:
                raise UndoRefused(f"{damaged}: {error}") from None
    try:
        record = UndoRecord.from_dict(json.loads((folder / MANIFEST).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise UndoRefused(f"{damaged}: {MANIFEST} cannot be read (truncated or edited?)") from None
    if record.run_id != run_id:
        raise UndoRefused(f"{damaged}: {MANIFEST} is the record of run {record.run_id}")
    try:
        before = (pl.read_parquet(folder / BEFORE).select(ROW_COLUMNS)
                  if (folder / BEFORE).exists() else pl.DataFrame())
    except (OSError, pl.exceptions.PolarsError):
        raise UndoRefused(f"{damaged}: {BEFORE} cannot be read (truncated?)") from None
    try:
        keys = (pl.concat([pl.read_parquet(p).select(KEY) for p in inserted])
                if record.inserted and inserted else pl.DataFrame(schema=_KEY_SCHEMA))
    except (OSError, pl.exceptions.PolarsError):
        raise UndoRefused(f"{damaged}: {INSERTED} cannot be read (truncated?)") from None
    return record, before, keys


def _inserted_name(number: int) -> str:
    return INSERTED if number == 0 else INSERTED.replace(".parquet", f"-{number}.parquet")


_KEY_SCHEMA = {"settlement_date": pl.Date, "settlement_period": pl.Int32, "farm_id": pl.String,
               "miner_model": pl.String}
#: The before-image's columns, in the order of the staging table.
ROW_COLUMNS = ("id", "action", *KEY, "bitcoin_mined", "difficulty", "calculated_at",
               "bitcoin_after", "difficulty_after")


@dataclass(frozen=True)
class RunRow:
    month: str
    status: str
    formula: str
    undone_by: int | None
    undo_of: int | None


def lock_run(cursor: db.Cursor, run_id: int, *, engine_schema: str = DEFAULT_SCHEMA) -> RunRow:
    """The run's row, locked; raise `UndoRefused` when it is missing, already undone, an undo
    itself, or never committed its changes."""
    rows = db.fetch_all(cursor, sql(RUN_ROW, engine_schema), (run_id,))
    if not rows:
        raise UndoRefused(f"there is no run {run_id}")
    run = RunRow(*rows[0])
    if run.undone_by is not None:
        raise UndoRefused(f"run {run_id} was already undone by run {run.undone_by}")
    if run.undo_of is not None:
        raise UndoRefused(f"run {run_id} is an undo (of run {run.undo_of}); run the original again")
    if run.status not in UNDOABLE:
        raise UndoRefused(f"run {run_id} is {run.status}: it changed nothing that could be undone")
    return run


def link(cursor: db.Cursor, run_id: int, undo_run_id: int, *,
         engine_schema: str = DEFAULT_SCHEMA) -> None:
    cursor.execute(sql(LINK, engine_schema), (run_id, undo_run_id))


@dataclass(frozen=True)
class Restored:
    removed: int  # rows the run inserted, deleted again
    restored: int  # rows it updated, put back
    reinserted: int  # rows it deleted, inserted again with their ids

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def check(cursor: db.Cursor, record: UndoRecord, before: pl.DataFrame,
          inserted: pl.DataFrame) -> None:
    """Raise `UndoRefused` unless `restore` could put the run back now. Changes nothing (it
    stages the run's rows in temporary tables and locks the rows it updated until the
    caller's transaction ends)."""
    deletes = _stage(cursor, record, before, inserted)
    if record.inserted:
        left = int(db.fetch_all(cursor, INSERTED_LEFT, (record.applied_at,))[0][0])
        if left != record.inserted:
            raise UndoRefused(_inserted_changed(record, left))
    if deletes and schema.has_unique_key(cursor) and db.fetch_all(cursor, DELETED_KEY_TAKEN)[0][0]:
        raise UndoRefused(_key_index_forbids(record, deletes))


def restore(cursor: db.Cursor, record: UndoRecord, before: pl.DataFrame,
            inserted: pl.DataFrame) -> Restored:
    """Put the table back as it was before the run, in the caller's transaction.

    Raises `UndoRefused` (the transaction must be rolled back) when a row is no longer as the
    run left it, or when the unique key index forbids re-inserting deleted duplicates.
    """
    deletes = _stage(cursor, record, before, inserted)
    removed = 0
    if record.inserted:
        removed = int(db.fetch_all(cursor, DELETE_INSERTED, (record.applied_at,))[0][0])
        if removed != record.inserted:
            raise UndoRefused(_inserted_changed(record, removed))
    restored = db.execute(cursor, RESTORE_UPDATED)
    try:
        reinserted = db.execute(cursor, RESTORE_DELETED)
    except adbc_driver_manager.IntegrityError as error:
        raise UndoRefused(_key_index_forbids(record, deletes)) from error
    if mismatched := db.fetch_all(cursor, NOT_RESTORED)[0][0]:
        raise UndoRefused(f"{mismatched} row(s) did not come back exactly; nothing was changed")
    return Restored(removed, restored, reinserted)


def _stage(cursor: db.Cursor, record: UndoRecord, before: pl.DataFrame,
           inserted: pl.DataFrame) -> int:
    """Stage the before-images (and the inserted keys) in temporary tables, lock the rows the
    run updated and refuse unless they and the deleted ids are as the run left them. Returns
    how many rows the run deleted."""
    cursor.execute(CREATE_ROWS)
    if before.height:
        rows = before.select(ROW_COLUMNS).with_columns(pl.col("id").cast(pl.Int64),
                                                       pl.col("settlement_period").cast(pl.Int32))
        cursor.adbc_ingest(ROWS, rows.to_arrow(), mode="append", temporary=True)
    updates = before.filter(pl.col("action") == "update").height if before.height else 0
    deletes = before.height - updates
    if updates != record.updated or deletes != record.deleted:
        raise UndoRefused(f"the undo record of run {record.run_id} is incomplete")
    locked = len(db.fetch_all(cursor, LOCK_UPDATED, (record.applied_at,)))
    if locked != updates:
        raise UndoRefused(f"{updates - locked} of the {updates} row(s) run {record.run_id} "
                          "updated were changed since; undo the later runs first")
    back = db.fetch_all(cursor, DELETED_BACK)[0][0]
    if back:
        raise UndoRefused(f"{back} row(s) run {record.run_id} deleted are present again")
    if record.inserted:
        cursor.execute(CREATE_KEYS)
        cursor.adbc_ingest(KEYS, inserted.to_arrow(), mode="append", temporary=True)
        # Without statistics the planner takes the staged keys for a handful and loops over them.
        cursor.execute(ANALYZE_KEYS)
    return deletes


def _inserted_changed(record: UndoRecord, left: int) -> str:
    return (f"{record.inserted - left} of the {record.inserted} row(s) run {record.run_id} "
            "inserted were changed or removed since; undo the later runs first")


def _key_index_forbids(record: UndoRecord, deletes: int) -> str:
    return (f"run {record.run_id} deleted {deletes} duplicate row(s), and the unique key index "
            "now forbids putting them back; drop historical_bitcoin_calculations_key to undo it")
