"""Step 1, extract: read a month (or a slice of its days) of source rows, calculations and
difficulty with connectorx."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from engine.errors import SourceDataError
from engine.month import fingerprints, slices
from engine.months import Days, Month
from engine.store import db
from engine.store.paths import Layout, write_parquet
from engine.store.schema import CALCULATIONS, DEFAULT_SCHEMA, table

Span = Month | Days


def _in_month(span: Span) -> str:
    days = span if isinstance(span, Days) else Days.of(span)
    return (f"settlement_date >= {db.literal(days.first)} "
            f"AND settlement_date < {db.literal(days.end)}")


def curtailment_sql(month: Span) -> str:
    return ("SELECT id, settlement_date, settlement_period, farm_id, lead_party_name, volume, "
            f"{fingerprints.SOURCE_HASH} AS row_hash FROM curtailment_records WHERE {_in_month(month)}")


def calculations_sql(month: Span, *, narrow: bool = False) -> str:
    """All columns for the snapshot (with each row's hash); with `narrow`, what verification
    reads when it names the rows that differ: key and values."""
    columns = "settlement_date, settlement_period, farm_id, miner_model, bitcoin_mined, difficulty"
    if not narrow:
        columns = f"id, {columns}, calculated_at, {fingerprints.CALCULATIONS_HASH} AS row_hash"
    return f"SELECT {columns} FROM {CALCULATIONS} WHERE {_in_month(month)}"


def non_finite_sql(month: Span) -> str:
    """Records whose volume is NaN or ±Infinity: numeric allows them, connectorx cannot read them."""
    return ("SELECT settlement_date, settlement_period, farm_id, volume::text AS volume "
            f"FROM curtailment_records WHERE {_in_month(month)} "
            "AND volume::text IN ('NaN', 'Infinity', '-Infinity') ORDER BY 1, 2, 3")


def difficulty_sql(month: Span, engine_schema: str = DEFAULT_SCHEMA) -> str:
    return (f"SELECT settlement_date, difficulty, {fingerprints.DIFFICULTY_HASH} AS row_hash "
            f"FROM {table('bitcoin_difficulty', engine_schema)} "
            f"WHERE {_in_month(month)}")


DAY_SIZES = f"""
SELECT settlement_date, sum(records)::bigint, sum(calculations)::bigint FROM (
    SELECT settlement_date, count(*) AS records, 0 AS calculations FROM curtailment_records
    WHERE settlement_date >= $1::date AND settlement_date < $2::date GROUP BY 1
    UNION ALL
    SELECT settlement_date, 0, count(*) FROM {CALCULATIONS}
    WHERE settlement_date >= $1::date AND settlement_date < $2::date GROUP BY 1) AS sizes
GROUP BY 1
"""


def day_sizes(cursor: db.Cursor, month: Month) -> dict[date, slices.DaySize]:
    """Each day of `month` with rows: its curtailment records and calculations (what
    `engine.month.slices` plans the month's slices from)."""
    rows = db.fetch_all(cursor, DAY_SIZES, (month.first_day, month.next_first_day))
    return {day: slices.DaySize(int(records), int(calculations)) for day, records, calculations in rows}


@dataclass(frozen=True)
class Snapshot:
    """A month as the database held it, where its Parquet copies are, and its fingerprint
    (`prints`, per table and day, from the hashes PostgreSQL gave each row read;
    `calculation_hashes` keeps each calculation row's: id, settlement_date, row_hash)."""

    month: Month
    curtailment: pl.DataFrame
    calculations: pl.DataFrame
    difficulty: pl.DataFrame
    files: dict[str, Path]
    prints: fingerprints.Prints
    calculation_hashes: pl.DataFrame
    days: Days  # the days read: the whole month, or a slice of it

    @classmethod
    def of_frames(cls, month: Month, curtailment: pl.DataFrame, calculations: pl.DataFrame,
                  difficulty: pl.DataFrame, files: dict[str, Path],
                  days: Days | None = None) -> Snapshot:
        """The snapshot of frames read with the SQL above (each with its `row_hash`)."""
        frames = {"source": curtailment, "calculations": calculations, "difficulty": difficulty}
        prints = {key: day for kind, frame in frames.items()
                  for key, day in fingerprints.of_frame(kind, frame).items()}
        return cls(month, curtailment.drop("row_hash"), calculations.drop("row_hash"),
                   difficulty.drop("row_hash"), files, prints,
                   calculations.select("id", "settlement_date", "row_hash"), days or Days.of(month))

    def to_dict(self) -> dict[str, object]:
        return {
            "curtailment_records": self.curtailment.height,
            "calculations": self.calculations.height,
            "difficulty_dates": self.difficulty.height,
        }


def extract_month(url: str, month: Month, layout: Layout, *, days: Days | None = None,
                  part: int = 0, engine_schema: str = DEFAULT_SCHEMA) -> Snapshot:
    """Read the month's three inputs (only those of `days`, when given) and write each to
    `data/extracts/<table>/month=…/part-<part>.parquet`. Raises `EnvironmentProblem` before
    reading when the data directory cannot be written."""
    layout.check_writable()
    span: Span = days or month
    queries = {
        "curtailment_records": curtailment_sql(span),
        CALCULATIONS: calculations_sql(span),
        "bitcoin_difficulty": difficulty_sql(span, engine_schema),
    }

    def read_and_write(name: str) -> tuple[pl.DataFrame, Path]:
        try:
            frame = read(url, queries[name])
        except db.TransientDatabaseError:
            if name == "curtailment_records":
                _reject_non_finite(url, span)
            raise
        return frame, write_parquet(frame.drop("row_hash"), layout.extract(name, month, part))

    # connectorx and Parquet writes release the GIL: the three reads overlap.
    with ThreadPoolExecutor(len(queries)) as pool:
        done = dict(zip(queries, pool.map(read_and_write, queries), strict=True))
    frames = {name: frame for name, (frame, _) in done.items()}
    files = {name: path for name, (_, path) in done.items()}
    return Snapshot.of_frames(month, frames["curtailment_records"], frames[CALCULATIONS],
                              frames["bitcoin_difficulty"], files, days)


def extract_after(url: str, month: Month, layout: Layout) -> Path:
    """Re-read the month's calculations (key, bitcoin and difficulty) after a load."""
    return write_parquet(read(url, calculations_sql(month, narrow=True)), layout.after(month))


def _reject_non_finite(url: str, span: Span) -> None:
    """Raise `SourceDataError` naming the records when a failed read was a non-finite volume."""
    bad = read(url, non_finite_sql(span))
    if bad.height:
        first = bad.row(0, named=True)
        raise SourceDataError(
            f"{bad.height} curtailment record(s) of {span} have a non-finite volume (first: "
            f"{first['settlement_date']} period {first['settlement_period']} farm "
            f"{first['farm_id']}, volume {first['volume']}); fix or delete them")


def read(url: str, sql: str) -> pl.DataFrame:
    frame = pl.from_arrow(db.read_arrow(url, sql))
    assert isinstance(frame, pl.DataFrame)
    return frame
