"""Daily bitcoin difficulty: read a JSON or CSV file, upsert it into `bitcoin_difficulty`."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

import polars as pl

from engine.errors import InputError
from engine.store import db
from engine.store.schema import DEFAULT_SCHEMA, sql

SCHEMA = pl.Schema([("settlement_date", pl.Date()), ("difficulty", pl.Decimal(38, 10))])

CREATE_STAGE = """
CREATE TEMPORARY TABLE engine_difficulty_stage (
    settlement_date date NOT NULL, difficulty numeric NOT NULL
) ON COMMIT DROP
"""
UPSERT = """
INSERT INTO {engine}.bitcoin_difficulty (settlement_date, difficulty)
SELECT settlement_date, difficulty FROM engine_difficulty_stage
ON CONFLICT (settlement_date) DO UPDATE SET difficulty = excluded.difficulty
WHERE bitcoin_difficulty.difficulty IS DISTINCT FROM excluded.difficulty
RETURNING (xmax = 0) AS inserted
"""


@dataclass(frozen=True)
class DifficultyLoad:
    dates: int
    inserted: int
    updated: int
    first: date | None
    last: date | None

    @property
    def unchanged(self) -> int:
        return self.dates - self.inserted - self.updated

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "unchanged": self.unchanged,
                "first": self.first.isoformat() if self.first else None,
                "last": self.last.isoformat() if self.last else None}


def read_difficulty_file(path: Path) -> pl.DataFrame:
    """Parse `{"YYYY-MM-DD": value}` JSON or `date,difficulty` CSV into a frame.

    Raises `InputError` naming the file and the first bad entry: an unreadable file, a bad
    date, a value that is not a positive number, or a date given twice.
    """
    try:
        text = path.read_text()
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    pairs = _json_pairs(path, text) if path.suffix.lower() == ".json" else _csv_pairs(path, text)
    seen: dict[date, Decimal] = {}
    for raw_date, raw_value in pairs:
        day = _parse_date(path, raw_date)
        value = _parse_value(path, raw_date, raw_value)
        if day in seen:
            raise InputError(f"{path}: date {day} is given twice")
        seen[day] = value
    if not seen:
        raise InputError(f"{path} holds no difficulty")
    days = sorted(seen)
    return pl.DataFrame({"settlement_date": days, "difficulty": [seen[d] for d in days]},
                        schema=SCHEMA)


def load_difficulty(conn: db.Connection, frame: pl.DataFrame, *, lock_timeout_ms: int,
                    statement_timeout_ms: int, engine_schema: str = DEFAULT_SCHEMA) -> DifficultyLoad:
    """Insert new dates and update changed values in one transaction."""
    with db.transaction(conn, lock_timeout_ms=lock_timeout_ms,
                        statement_timeout_ms=statement_timeout_ms) as cursor:
        cursor.execute(CREATE_STAGE)
        cursor.adbc_ingest("engine_difficulty_stage", frame.to_arrow(), mode="append",
                           temporary=True)
        cursor.execute(sql(UPSERT, engine_schema))
        flags = [row[0] for row in cursor.fetchall()]
    dates = frame["settlement_date"]
    return DifficultyLoad(frame.height, sum(flags), len(flags) - sum(flags),
                          dates.min(), dates.max())  # type: ignore[arg-type]


def _json_pairs(path: Path, text: str) -> list[tuple[str, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f'{path} must be a JSON object {{"YYYY-MM-DD": difficulty}}')
    return list(data.items())


def _csv_pairs(path: Path, text: str) -> list[tuple[str, object]]:
    rows = [row for row in csv.reader(text.splitlines()) if row and any(c.strip() for c in row)]
    if rows and [c.strip().lower() for c in rows[0]] == ["date", "difficulty"]:
        rows = rows[1:]
    for number, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise InputError(f"{path}: row {number} should be date,difficulty, not {','.join(row)!r}")
    return [(row[0].strip(), row[1].strip()) for row in rows]


def _parse_date(path: Path, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{path}: {text!r} is not a date of the form YYYY-MM-DD") from None


def _parse_value(path: Path, day: str, raw: object) -> Decimal:
    try:
        value = Decimal(str(raw)) if not isinstance(raw, bool) else Decimal("nan")
    except InvalidOperation:
        value = Decimal("nan")
    if not value.is_finite() or value <= 0 or value >= Decimal("1e27"):
        raise InputError(f"{path}: difficulty for {day} must be a positive number, not {raw!r}")
    return value
