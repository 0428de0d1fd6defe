"""Where the reconciliation stands, read from the database (never from a run's memory).

Expected rows are what the source implies now: every qualifying (date, period, farm) times every
miner model; present rows are those expected keys the calculations table holds (orphans and
duplicate copies are not counted). Month statuses come from `reconciliation_progress` and
the advisory locks. `engine status` and `engine status-month` render these objects.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from engine.month import locks, progress
from engine.months import Month, periods_in_day
from engine.store import db
from engine.store.schema import CALCULATIONS, DEFAULT_SCHEMA, sql

# One row per (date, model): expected keys and how many of them are present.
DAY_COUNTS = f"""
WITH keys AS (
    SELECT settlement_date, settlement_period, farm_id FROM curtailment_records
    WHERE settlement_date >= $1 AND settlement_date < $2
    GROUP BY 1, 2, 3 HAVING sum(abs(volume)) > 0),
models AS (SELECT unnest($3::text[]) AS miner_model),
present AS (
    SELECT DISTINCT settlement_date, settlement_period, farm_id, miner_model FROM {CALCULATIONS}
    WHERE settlement_date >= $1 AND settlement_date < $2)
SELECT k.settlement_date, m.miner_model, count(*), count(p.farm_id)
FROM keys k CROSS JOIN models m
LEFT JOIN present p USING (settlement_date, settlement_period, farm_id, miner_model)
GROUP BY 1, 2 ORDER BY 1, 2
"""

LAST_RUN = """
SELECT id, month, command, status, started_at, finished_at, error
FROM {engine}.reconciliation_runs ORDER BY id DESC LIMIT 1
"""
LAST_RUN_OF_MONTH = """
SELECT id, month, command, status, started_at, finished_at, error
FROM {engine}.reconciliation_runs WHERE month = $1 ORDER BY id DESC LIMIT 1
"""

BACKFILLS = """
SELECT b.id, b.command, b.status, b.started_at, b.finished_at, jsonb_array_length(b.plan),
       b.months_verified, b.months_failed, b.months_skipped, b.rows_inserted, b.retries, b.jobs,
       EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
               AND l.classid = $1::int8::oid AND l.objid = (b.id % 2147483648)::int8::oid
               AND l.objsubid = 2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
FROM {engine}.reconciliation_backfills b ORDER BY b.id DESC LIMIT $2
"""

#: Month states as `engine status` names them (plan selections use missing/running).
STATUS_NAMES = {"missing": "not_started", "running": "in_progress", "stale": "stale",
                "completed": "completed", "failed": "failed", "interrupted": "interrupted",
                "regressed": "regressed"}


@dataclass(frozen=True)
class Coverage:
    expected: int
    present: int

    @property
    def missing(self) -> int:
        return self.expected - self.present

    @property
    def percent(self) -> float:
        """Floored to 0.01, so 100.0 means every expected row is present."""
        return 100.0 if self.expected == 0 else math.floor(10_000 * self.present / self.expected) / 100

    def __add__(self, other: Coverage) -> Coverage:
        return Coverage(self.expected + other.expected, self.present + other.present)

    def to_dict(self) -> dict[str, Any]:
        return {"expected": self.expected, "present": self.present, "missing": self.missing,
                "percent": self.percent}


NONE = Coverage(0, 0)


@dataclass(frozen=True)
class DayCount:
    day: date
    model: str
    coverage: Coverage


@dataclass(frozen=True)
class RunInfo:
    id: int
    month: str
    command: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "month": self.month, "command": self.command, "status": self.status,
                "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "error": self.error}


@dataclass(frozen=True)
class BackfillInfo:
    """A backfill's record; `alive` says whether its process still holds its lock."""

    id: int
    command: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    months: int
    verified: int
    failed: int
    skipped: int
    inserted: int
    retries: int
    jobs: int
    alive: bool

    @property
    def state(self) -> str:
        """`status`, except a `running` backfill whose process is gone is `stopped`."""
        return "stopped" if self.status == "running" and not self.alive else self.status

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "status": self.state,
                "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "months": self.months, "verified": self.verified, "failed": self.failed,
                "skipped": self.skipped, "rows_inserted": self.inserted, "retries": self.retries,
                "jobs": self.jobs}


@dataclass(frozen=True)
class MonthLine:
    month: Month
    status: str  # not_started | in_progress | stale | completed | failed | interrupted | regressed
    coverage: Coverage
    attempts: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None
    finished_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"month": str(self.month), "status": self.status, **self.coverage.to_dict(),
                "attempts": self.attempts, "last_error": self.last_error,
                "last_error_kind": self.last_error_kind, "finished_at": _iso(self.finished_at)}


@dataclass(frozen=True)
class Status:
    """`engine status`: overall, per year, per model, months by status, the last run."""

    generated_at: datetime
    models: tuple[str, ...]
    overall: Coverage
    by_year: dict[str, Coverage]
    by_model: dict[str, Coverage]
    months_by_status: dict[str, int]
    months: tuple[MonthLine, ...]
    last_run: RunInfo | None
    last_backfill: BackfillInfo | None

    @property
    def complete(self) -> bool:
        return self.overall.missing == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": _iso(self.generated_at), "models": list(self.models),
            "overall": self.overall.to_dict(),
            "by_year": {k: v.to_dict() for k, v in self.by_year.items()},
            "by_model": {k: v.to_dict() for k, v in self.by_model.items()},
            "months_by_status": self.months_by_status,
            "months": [m.to_dict() for m in self.months],
            "last_run": self.last_run.to_dict() if self.last_run else None,
            "last_backfill": self.last_backfill.to_dict() if self.last_backfill else None,
        }


@dataclass(frozen=True)
class DayLine:
    day: date
    periods: int  # settlement periods the day has: 46, 48 or 50
    expected: int  # per model (every model has the same keys)
    present: dict[str, int]

    @property
    def missing(self) -> dict[str, int]:
        return {model: self.expected - count for model, count in self.present.items()}

    @property
    def complete(self) -> bool:
        return not any(self.missing.values())

    def to_dict(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), "periods": self.periods, "expected": self.expected,
                "present": self.present, "missing": self.missing, "complete": self.complete}


@dataclass(frozen=True)
class MonthStatus:
    """`engine status-month`: the month by day, incomplete days first."""

    month: Month
    generated_at: datetime
    line: MonthLine
    by_model: dict[str, Coverage]
    days: tuple[DayLine, ...]
    last_run: RunInfo | None

    def to_dict(self) -> dict[str, Any]:
        return {"month": str(self.month), "generated_at": _iso(self.generated_at),
                **{k: v for k, v in self.line.to_dict().items() if k != "month"},
                "by_model": {k: v.to_dict() for k, v in self.by_model.items()},
                "days_incomplete": sum(not d.complete for d in self.days),
                "days": [d.to_dict() for d in self.days],
                "last_run": self.last_run.to_dict() if self.last_run else None}


def day_counts(cursor: db.Cursor, first: Month, last: Month, models: Iterable[str]) -> list[DayCount]:
    """Expected and present rows per (date, model) for the months `first`..`last`."""
    rows = db.fetch_all(cursor, DAY_COUNTS, (first.first_day, last.next_first_day, list(models)))
    return [DayCount(r[0], r[1], Coverage(int(r[2]), int(r[3]))) for r in rows]


def month_coverage(counts: Iterable[DayCount]) -> dict[Month, Coverage]:
    totals: dict[Month, Coverage] = defaultdict(lambda: NONE)
    for count in counts:
        totals[Month.of(count.day)] += count.coverage
    return dict(totals)


def month_lines(cursor: db.Cursor, counts: list[DayCount], *,
                engine_schema: str = DEFAULT_SCHEMA) -> list[MonthLine]:
    """One line per month that has curtailment or a progress row, oldest first."""
    coverage = month_coverage(counts)
    states = progress.month_states(cursor, Month(2000, 1), Month(2100, 12),
                                   engine_schema=engine_schema)
    lines = []
    for month in sorted(coverage.keys() | states.keys()):
        state = states.get(month)
        name = STATUS_NAMES[state.selection] if state else "not_started"
        lines.append(MonthLine(month, name, coverage.get(month, NONE),
                               state.attempts if state else 0, state.last_error if state else None,
                               state.last_error_kind if state else None,
                               state.finished_at if state else None))
    return lines


def get_status(cursor: db.Cursor, models: Iterable[str], *,
               engine_schema: str = DEFAULT_SCHEMA) -> Status:
    """The whole picture; one pass over the source and the calculations (≈1.5 s at 1.5M rows)."""
    names = tuple(models)
    counts = day_counts(cursor, Month(2000, 1), Month(2100, 12), names)
    by_year: dict[str, Coverage] = defaultdict(lambda: NONE)
    by_model: dict[str, Coverage] = {name: NONE for name in sorted(names)}
    for count in counts:
        by_year[str(count.day.year)] += count.coverage
        by_model[count.model] += count.coverage
    lines = month_lines(cursor, counts, engine_schema=engine_schema)
    by_status: dict[str, int] = {}
    for line in lines:
        by_status[line.status] = by_status.get(line.status, 0) + 1
    backfills = recent_backfills(cursor, 1, engine_schema=engine_schema)
    return Status(_now(cursor), names, sum(by_model.values(), NONE) if names else NONE,
                  dict(sorted(by_year.items())), by_model, dict(sorted(by_status.items())),
                  tuple(lines), last_run(cursor, engine_schema=engine_schema),
                  backfills[0] if backfills else None)


def get_month_status(cursor: db.Cursor, month: Month, models: Iterable[str], *,
                     engine_schema: str = DEFAULT_SCHEMA) -> MonthStatus:
    """The month by day: expected, present and missing per model, incomplete days first."""
    names = tuple(sorted(models))
    counts = day_counts(cursor, month, month, names)
    per_day: dict[date, dict[str, Coverage]] = defaultdict(dict)
    for count in counts:
        per_day[count.day][count.model] = count.coverage
    days = [DayLine(day, periods_in_day(day), max(c.expected for c in cov.values()),
                    {m: cov[m].present for m in names}) for day, cov in per_day.items()]
    days.sort(key=lambda d: (d.complete, -sum(d.missing.values()), d.day))
    by_model = {m: sum((c.coverage for c in counts if c.model == m), NONE) for m in names}
    line = next((ln for ln in month_lines(cursor, counts, engine_schema=engine_schema)
                 if ln.month == month), MonthLine(month, "not_started", NONE))
    return MonthStatus(month, _now(cursor), line, by_model, tuple(days),
                       last_run(cursor, month, engine_schema=engine_schema))


def missing_rows(cursor: db.Cursor, months: Iterable[Month], models: Iterable[str]) -> dict[Month, int]:
    """Rows still missing now in each of `months` (one query each: they use the date index)."""
    names = list(models)
    return {month: sum(c.coverage.missing for c in day_counts(cursor, month, month, names))
            for month in months}


def last_run(cursor: db.Cursor, month: Month | None = None, *,
             engine_schema: str = DEFAULT_SCHEMA) -> RunInfo | None:
    if month is None:
        rows = db.fetch_all(cursor, sql(LAST_RUN, engine_schema))
    else:
        rows = db.fetch_all(cursor, sql(LAST_RUN_OF_MONTH, engine_schema), (str(month),))
    return RunInfo(*rows[0]) if rows else None


def recent_backfills(cursor: db.Cursor, limit: int = 5, *,
                     engine_schema: str = DEFAULT_SCHEMA) -> list[BackfillInfo]:
    rows = db.fetch_all(cursor, sql(BACKFILLS, engine_schema), (locks.BACKFILL_LOCK_CLASS, limit))
    return [BackfillInfo(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]),
                         int(r[8]), int(r[9]), int(r[10]), int(r[11]), bool(r[12])) for r in rows]


def _now(cursor: db.Cursor) -> datetime:
    return db.fetch_all(cursor, "SELECT now()")[0][0]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
