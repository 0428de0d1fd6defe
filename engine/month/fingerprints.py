"""Per-day fingerprints of a month: how many rows each day holds and an order-independent sum
of their hashes, for the source (curtailment records), the month's difficulty and the
calculations. Two states of a day are the same when both numbers are.

Each row's hash is PostgreSQL's `hash_record_extended` over the columns the engine reads from
it (numeric hashes ignore the scale, so `0.5` and `0.50` agree; a column that rounds does not).
The extract reads it with every row, so the snapshot's fingerprint is computed from exactly the
rows the month was computed from; the write transaction asks PostgreSQL for the same numbers
before it writes (`moved` names the days that differ), and verification compares the table
after the write with the fingerprint the run predicts for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

import polars as pl

from engine.months import Month
from engine.store import db
from engine.store.schema import CALCULATIONS, DEFAULT_SCHEMA, sql, table

#: The hash of a row, per table, over what the engine reads from it.
SOURCE_HASH = ("hash_record_extended(ROW(settlement_date, settlement_period::bigint, "
               "farm_id::text, volume::numeric), 0)")
CALCULATIONS_HASH = ("hash_record_extended(ROW(settlement_date, settlement_period::bigint, "
                     "farm_id::text, miner_model::text, bitcoin_mined::numeric, "
                     "difficulty::numeric), 0)")
DIFFICULTY_HASH = "hash_record_extended(ROW(settlement_date, difficulty::numeric), 0)"
KINDS = ("source", "calculations", "difficulty")

_DAYS = "settlement_date >= $1::date AND settlement_date < $2::date"
_DAILY = ("SELECT {kind}, settlement_date, count(*), sum({hash})::text FROM {table} WHERE {days} "
          "GROUP BY 1, 2")
# Inside the write transaction: the calculations it wrote (inserted or updated) apart from the
# rest, which must be as the snapshot held them.
_WRITTEN = "CASE WHEN xmin = pg_current_xact_id()::xid THEN 'written' ELSE 'calculations' END"


def _daily(kinds: Iterable[str], difficulty: str, *, split_written: bool = False) -> str:
    tables = {"source": ("curtailment_records", SOURCE_HASH),
              "calculations": (CALCULATIONS, CALCULATIONS_HASH),
              "difficulty": (difficulty, DIFFICULTY_HASH)}
    return "\nUNION ALL ".join(
        _DAILY.format(kind=_WRITTEN if kind == "calculations" and split_written else f"'{kind}'",
                      hash=tables[kind][1], table=tables[kind][0], days=_DAYS)
        for kind in kinds)


@dataclass(frozen=True, order=True)
class Day:
    """One day of one table: its rows and the sum of their hashes."""

    rows: int
    hash: int


EMPTY = Day(0, 0)

#: (kind, day) → Day; a day without rows is absent.
Prints = dict[tuple[str, date], Day]


def of_frame(kind: str, frame: pl.DataFrame) -> Prints:
    """The fingerprint of extracted rows from their `row_hash` column (exact: the 64-bit hashes
    are summed as two 32-bit halves)."""
    if frame.is_empty():
        return {}
    high = pl.col("row_hash") // 2**32
    days = frame.group_by("settlement_date").agg(
        rows=pl.len(), high=high.sum(), low=(pl.col("row_hash") - high * 2**32).sum())
    return {(kind, day): Day(rows, high * 2**32 + low)
            for day, rows, high, low in days.iter_rows()}


def plus(*prints: Mapping[tuple[str, date], Day], minus: Iterable[Prints] = ()) -> Prints:
    """The sum of fingerprints, less those in `minus` (a table with rows added and removed)."""
    total: dict[tuple[str, date], list[int]] = {}
    for sign, group in ((1, prints), (-1, tuple(minus))):
        for print_ in group:
            for key, day in print_.items():
                entry = total.setdefault(key, [0, 0])
                entry[0] += sign * day.rows
                entry[1] += sign * day.hash
    return {key: Day(rows, hash_) for key, (rows, hash_) in total.items() if rows or hash_}


def differences(want: Prints, got: Prints) -> list[tuple[str, date, Day, Day]]:
    """(kind, day, want, got) for every day that differs, in order."""
    return [(kind, day, want.get((kind, day), EMPTY), got.get((kind, day), EMPTY))
            for kind, day in sorted(want.keys() | got.keys())
            if want.get((kind, day), EMPTY) != got.get((kind, day), EMPTY)]


def describe(found: list[tuple[str, date, Day, Day]], limit: int = 3) -> str:
    """The first differing days in words: `source 2023-12-02: 40 → 41 row(s)`."""
    words = []
    for kind, day, want, got in found[:limit]:
        change = (f"{want.rows:,} → {got.rows:,} row(s)" if want.rows != got.rows
                  else f"{got.rows:,} row(s), values changed")
        words.append(f"{kind} {day}: {change}")
    more = f" and {len(found) - limit} more day(s)" if len(found) > limit else ""
    return "; ".join(words) + more


def query(cursor: db.Cursor, first: Month, last: Month, kinds: Iterable[str] = KINDS, *,
          engine_schema: str = DEFAULT_SCHEMA) -> Prints:
    """What the database holds now, per day from `first` to `last`: one scan per table, in one
    statement (one snapshot for all of them)."""
    statement = _daily(kinds, table("bitcoin_difficulty", engine_schema))
    rows = db.fetch_all(cursor, statement, (first.first_day, last.next_first_day))
    return {(kind, day): Day(int(n), int(h)) for kind, day, n, h in rows}


def before_commit(cursor: db.Cursor, month: Month, *, engine_schema: str = DEFAULT_SCHEMA) -> Prints:
    """The month inside its write transaction, as its last statement (after every lock it
    waited for): source, difficulty, the calculations it did not write (`calculations`) and
    those it wrote (`written`)."""
    statement = _daily(KINDS, table("bitcoin_difficulty", engine_schema), split_written=True)
    rows = db.fetch_all(cursor, statement, (month.first_day, month.next_first_day))
    return {(kind, day): Day(int(n), int(h)) for kind, day, n, h in rows}


def of_kinds(prints: Prints, *kinds: str) -> Prints:
    """The days of `prints` of the given kinds."""
    return {key: day for key, day in prints.items() if key[0] in kinds}


# The rows a write transaction staged, hashed as they will be stored if nothing changes them.
STAGED = ("SELECT 'calculations', settlement_date, count(*), sum(" + CALCULATIONS_HASH + ")::text "
          "FROM {rows} GROUP BY 2")


def staged(cursor: db.Cursor, rows: str) -> Prints:
    """The fingerprint of staged rows (`rows`: a table or join the engine created)."""
    return {(kind, day): Day(int(n), int(h))
            for kind, day, n, h in db.fetch_all(cursor, STAGED.format(rows=rows))}


RECORDS = """
SELECT to_char(settlement_date, 'YYYY-MM'), count(*) FROM curtailment_records
WHERE settlement_date >= $1::date AND settlement_date < $2::date GROUP BY 1
"""


def records_per_month(cursor: db.Cursor, first: Month, last: Month) -> dict[Month, int]:
    """The curtailment records of every month from `first` to `last` that has any."""
    rows = db.fetch_all(cursor, RECORDS, (first.first_day, last.next_first_day))
    return {Month.parse(month): int(n) for month, n in rows}


# --- what a month held when it was verified ---------------------------------------------------

STORE = """
INSERT INTO {engine}.reconciliation_fingerprints (kind, settlement_date, month, rows, hash, run_id)
SELECT kind, day, $1, rows, hash::numeric, $2
FROM unnest($3::text[], $4::date[], $5::bigint[], $6::text[]) AS t(kind, day, rows, hash)
"""
FORGET = "DELETE FROM {engine}.reconciliation_fingerprints WHERE month = $1"
STORED = """
SELECT kind, settlement_date, rows, hash::text FROM {engine}.reconciliation_fingerprints
WHERE month >= $1 AND month <= $2
"""
STORED_MONTHS = """
SELECT DISTINCT month FROM {engine}.reconciliation_fingerprints WHERE month >= $1 AND month <= $2
"""


def store(cursor: db.Cursor, month: Month, run_id: int, prints: Prints, *,
          engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Remember the month's source and calculations as a verified run left them."""
    cursor.execute(sql(FORGET, engine_schema), (str(month),))
    kept = sorted((k, d, v) for (k, d), v in prints.items() if k in ("source", "calculations"))
    cursor.execute(sql(STORE, engine_schema), (
        str(month), run_id, [k for k, _, _ in kept], [d for _, d, _ in kept],
        [v.rows for _, _, v in kept], [str(v.hash) for _, _, v in kept]))


def stored(cursor: db.Cursor, first: Month, last: Month, *,
           engine_schema: str = DEFAULT_SCHEMA) -> tuple[Prints, set[Month]]:
    """The stored fingerprints from `first` to `last`, and the months that have them."""
    prints = {(kind, day): Day(int(n), int(h)) for kind, day, n, h in db.fetch_all(
        cursor, sql(STORED, engine_schema), (str(first), str(last)))}
    months = {Month.parse(r[0]) for r in db.fetch_all(
        cursor, sql(STORED_MONTHS, engine_schema), (str(first), str(last)))}
    return prints, months


def month_of(day: date) -> Month:
    return Month(day.year, day.month)
