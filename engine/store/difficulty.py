"""Daily bitcoin difficulty: read a JSON or CSV file, upsert it into `bitcoin_difficulty`.

The file is distrusted: it must be a regular file (a FIFO or a device is refused before it is
opened) of at most `MAX_BYTES`, UTF-8, each date once (JSON duplicate keys too) inside a sane
range, each value a positive number the column keeps exactly. Every problem is one
`InputError` naming the file and the first bad entry, quoted in a few dozen characters.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import polars as pl

from engine.errors import InputError, quoted, shown_path
from engine.store import db
from engine.store.paths import check_input, file_kind
from engine.store.schema import DEFAULT_SCHEMA, sql

SCALE = 10  # the staging column's scale: Decimal(38, 10)
SCHEMA = pl.Schema([("settlement_date", pl.Date()), ("difficulty", pl.Decimal(38, SCALE))])
#: The largest file read, in bytes (`engine difficulty load --max-mb`).
MAX_BYTES = 50 * 1024 * 1024
#: The genesis block: no difficulty exists before it.
GENESIS = date(2009, 1, 3)
#: Values must be below this (38 digits at scale 10 leave 28 before the point).
MAX_VALUE = Decimal("1e27")
#: The longest date or value text read; anything longer is not a date or a difficulty.
MAX_FIELD = 64
#: Changed dates listed by a load (and its dry run), oldest first.
SHOWN_CHANGES = 10

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

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
# What the upsert would do: new dates, changed ones; and the first changed, old and new value.
PREVIEW = """
SELECT count(*) FILTER (WHERE d.settlement_date IS NULL),
       count(*) FILTER (WHERE d.settlement_date IS NOT NULL
                          AND d.difficulty IS DISTINCT FROM s.difficulty)
FROM engine_difficulty_stage s LEFT JOIN {engine}.bitcoin_difficulty d USING (settlement_date)
"""
CHANGED = """
SELECT s.settlement_date, d.difficulty::text, s.difficulty::text
FROM engine_difficulty_stage s JOIN {engine}.bitcoin_difficulty d USING (settlement_date)
WHERE d.difficulty IS DISTINCT FROM s.difficulty ORDER BY 1 LIMIT $1
"""


@dataclass(frozen=True)
class DateRange:
    """The dates a difficulty file may hold (both ends included)."""

    first: date
    last: date

    @classmethod
    def default(cls, earliest: date | None = None, latest: date | None = None) -> DateRange:
        """From the genesis block to tomorrow (UTC), unless told otherwise."""
        tomorrow = datetime.now(UTC).date() + timedelta(days=1)
        return cls(earliest or GENESIS, latest or tomorrow)


@dataclass(frozen=True)
class DifficultyChange:
    """A date whose stored value a load replaces."""

    settlement_date: date
    old: str
    new: str

    def to_dict(self) -> dict[str, str]:
        return {"date": self.settlement_date.isoformat(), "old": self.old, "new": self.new}


@dataclass(frozen=True)
class DifficultyLoad:
    """What a load did (or, with `dry_run`, would do). `to_dict()` is the `--json` contract."""

    dates: int
    inserted: int
    updated: int
    first: date | None
    last: date | None
    dry_run: bool = False
    changes: tuple[DifficultyChange, ...] = field(default=())  # the first SHOWN_CHANGES

    @property
    def unchanged(self) -> int:
        return self.dates - self.inserted - self.updated

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "unchanged": self.unchanged,
                "first": self.first.isoformat() if self.first else None,
                "last": self.last.isoformat() if self.last else None,
                "changes": [c.to_dict() for c in self.changes]}


def read_difficulty_file(path: Path, *, dates: DateRange | None = None,
                         max_bytes: int = MAX_BYTES) -> pl.DataFrame:
    """Parse `{"YYYY-MM-DD": value}` JSON or `date,difficulty` CSV into a frame.

    Raises `InputError` naming the file and the first bad entry: a special file, a file over
    `max_bytes`, invalid UTF-8, bad JSON (or nested too deeply), a duplicate key or date, a
    date outside `dates` (default `DateRange.default()`), a value that is not a positive
    number, that the column would round (more than 10 decimals, so 0.00000000001 would be 0)
    or that is too large.
    """
    dates = dates or DateRange.default()
    text = _read_text(path, max_bytes)
    pairs = _json_pairs(path, text) if path.suffix.lower() == ".json" else _csv_pairs(path, text)
    seen: dict[date, Decimal] = {}
    for raw_date, raw_value in pairs:
        day = _parse_date(path, raw_date, dates)
        if day in seen:
            raise InputError(f"{shown_path(path)}: date {day} is given twice")
        seen[day] = _parse_value(path, day, raw_value)
    if not seen:
        raise InputError(f"{shown_path(path)} holds no difficulty")
    days = sorted(seen)
    return pl.DataFrame({"settlement_date": days, "difficulty": [seen[d] for d in days]},
                        schema=SCHEMA)


def load_difficulty(conn: db.Connection, frame: pl.DataFrame, *, lock_timeout_ms: int,
                    statement_timeout_ms: int, engine_schema: str = DEFAULT_SCHEMA,
                    dry_run: bool = False) -> DifficultyLoad:
    """Insert new dates and update changed values in one transaction; with `dry_run`, only
    count what would be inserted, updated and left, and list the first changed dates."""
    with db.transaction(conn, lock_timeout_ms=lock_timeout_ms,
                        statement_timeout_ms=statement_timeout_ms) as cursor:
        cursor.execute(CREATE_STAGE)
        cursor.adbc_ingest("engine_difficulty_stage", frame.to_arrow(), mode="append",
                           temporary=True)
        changes = tuple(DifficultyChange(day, str(old), str(new)) for day, old, new in
                        db.fetch_all(cursor, sql(CHANGED, engine_schema), (SHOWN_CHANGES,)))
        if dry_run:
            inserted, updated = (int(n) for n in db.fetch_all(cursor, sql(PREVIEW, engine_schema))[0])
        else:
            cursor.execute(sql(UPSERT, engine_schema))
            flags = [row[0] for row in cursor.fetchall()]
            inserted, updated = sum(flags), len(flags) - sum(flags)
    dates = frame["settlement_date"]
    return DifficultyLoad(frame.height, inserted, updated, dates.min(), dates.max(),  # type: ignore[arg-type]
                          dry_run, changes)


# --- reading -----------------------------------------------------------------------------------


def _read_text(path: Path, max_bytes: int) -> str:
    """The file's text, read at most `max_bytes` + 1 bytes at a time; refuses special files
    before opening (and again after, in case the path was swapped meanwhile)."""
    check_input(path, "difficulty file", max_bytes=max_bytes)
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise InputError(f"cannot read {shown_path(path)}: {error.strerror or error}") from None
    with os.fdopen(handle, "rb") as stream:
        mode = os.fstat(stream.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{shown_path(path)} is a special file ({file_kind(mode)}), not a regular file")
        try:
            data = stream.read(max_bytes + 1)
        except OSError as error:
            raise InputError(f"cannot read {shown_path(path)}: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise InputError(f"{shown_path(path)} is more than the limit of {max_bytes:,} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{shown_path(path)} is not UTF-8 text (byte {error.start:,} is invalid)") from None


class _Object(list[tuple[str, Any]]):
    """A JSON object's pairs, in file order (a dict would keep only the last of a key)."""


def _json_pairs(path: Path, text: str) -> list[tuple[str, object]]:
    def pairs(items: list[tuple[str, Any]]) -> _Object:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise InputError(f"{shown_path(path)}: key {_shown(key)} is given twice")
            seen.add(key)
        return _Object(items)

    def number(text: str) -> Decimal:
        if len(text) > MAX_FIELD:
            raise InputError(f"{shown_path(path)}: a number of {len(text):,} characters is no difficulty")
        return Decimal(text)

    def constant(name: str) -> None:
        raise InputError(f"{shown_path(path)}: {name} is not a difficulty")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_int=number, parse_float=number,
                          parse_constant=constant)
    except RecursionError:
        raise InputError(f"{shown_path(path)} is nested too deeply to be a difficulty file") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{shown_path(path)} is not valid JSON: {error.msg} (line {error.lineno}, "
                         f"column {error.colno})") from None
    if not isinstance(data, _Object):
        raise InputError(f'{shown_path(path)} must be a JSON object {{"YYYY-MM-DD": difficulty}}')
    return list(data)


def _shown(raw: object) -> str:
    """A bad date or key as the error shows it: quoted when it looks like a date gone wrong,
    else only its length (the wrong file, a .pgpass say, must not be echoed)."""
    text = raw if isinstance(raw, str) else str(raw)
    if _DATELIKE.fullmatch(text):
        return quoted(text, 30)
    return f"a value of {len(text):,} character(s)"


_DATELIKE = re.compile(r"[0-9 ./:T-]{1,30}")


def _csv_pairs(path: Path, text: str) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            if not pairs and [c.strip().lower() for c in row] == ["date", "difficulty"]:
                continue
            if len(row) != 2:
                raise InputError(f"{shown_path(path)}: line {reader.line_num} should be "
                                 f"date,difficulty, not {len(row)} field(s)")
            pairs.append((row[0].strip(), row[1].strip()))
    except csv.Error as error:
        raise InputError(f"{shown_path(path)}: line {reader.line_num} is not CSV ({error})") from None
    return pairs


def _parse_date(path: Path, raw: object, dates: DateRange) -> date:
    text = raw if isinstance(raw, str) else ""
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        day = date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{shown_path(path)}: {_shown(raw)} is not a date of the form "
                         "YYYY-MM-DD") from None
    if not dates.first <= day <= dates.last:
        raise InputError(f"{shown_path(path)}: date {day} is outside {dates.first}..{dates.last} "
                         "(from the genesis block to tomorrow unless --earliest/--latest say otherwise)")
    return day


def _parse_value(path: Path, day: date, raw: object) -> Decimal:
    shown = quoted(raw, 30)
    if isinstance(raw, str) and len(raw) > MAX_FIELD:
        raise InputError(f"{shown_path(path)}: difficulty for {day} is {len(raw):,} characters long, "
                         "not a number")
    try:
        value = Decimal(raw) if isinstance(raw, (str, Decimal)) else Decimal("nan")
    except InvalidOperation:
        value = Decimal("nan")
    if not value.is_finite() or value <= 0:
        raise InputError(f"{shown_path(path)}: difficulty for {day} must be a positive number, not {shown}")
    if value >= MAX_VALUE:
        raise InputError(f"{shown_path(path)}: difficulty for {day} is too large ({shown}; the column "
                         f"holds less than {MAX_VALUE:.0e})")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -SCALE:
        rounded = value.quantize(Decimal(1).scaleb(-SCALE), context=Context(prec=100))
        outcome = "0" if rounded == 0 else f"{rounded}"
        raise InputError(f"{shown_path(path)}: difficulty for {day} ({shown}) has more than {SCALE} "
                         f"decimals; it would be stored as {outcome}")
    return value
