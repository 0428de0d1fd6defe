"""What is left to do, what failed, how long the rest will take, and what each day's runs did.

`engine report` renders a `BacklogReport`; a `DailySummary` per day of runs is written under
`data/reports/`. Everything is read from the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

from engine.months import Month
from engine.reporting.status import (
    BackfillInfo,
    Coverage,
    MonthLine,
    day_counts,
    month_lines,
    recent_backfills,
)
from engine.store import db
from engine.store.schema import DEFAULT_SCHEMA, sql

# The measured cost of earlier months: seconds against expected and inserted rows.
RECENT_RUNS = """
SELECT (rows->>'expected')::bigint, (rows->>'inserted')::bigint,
       (SELECT sum(value::float8) FROM jsonb_each_text(timings))
FROM {engine}.reconciliation_runs
WHERE status = 'verified' AND rows IS NOT NULL AND timings IS NOT NULL
ORDER BY id DESC LIMIT 200
"""

# The speed-up of the newest finished parallel backfill: Σ month seconds / wall seconds.
PARALLEL_SPEEDUP = """
SELECT b.jobs, extract(epoch FROM b.finished_at - b.started_at),
       (SELECT sum(extract(epoch FROM r.finished_at - r.started_at)) FROM {engine}.reconciliation_runs r
        WHERE r.backfill_id = b.id AND r.finished_at IS NOT NULL)
FROM {engine}.reconciliation_backfills b
WHERE b.jobs > 1 AND b.finished_at IS NOT NULL AND b.rows_inserted > 0
ORDER BY b.id DESC LIMIT 1
"""

DAYS_WITH_RUNS = """
SELECT DISTINCT started_at::date FROM {engine}.reconciliation_runs ORDER BY 1
"""

DAY_RUNS = """
SELECT month, status, count(*), coalesce(sum((rows->>'inserted')::bigint), 0),
       coalesce(sum(extract(epoch FROM finished_at - started_at)), 0)
FROM {engine}.reconciliation_runs WHERE started_at::date = $1 GROUP BY 1, 2 ORDER BY 1, 2
"""

DAY_FAILURES = """
SELECT id, month, command, error FROM {engine}.reconciliation_runs
WHERE started_at::date = $1 AND status IN ('failed', 'unverified') ORDER BY id
"""

DAY_BACKFILLS = """
SELECT id FROM {engine}.reconciliation_backfills WHERE started_at::date = $1 ORDER BY id
"""


@dataclass(frozen=True)
class RemainingDay:
    day: date
    coverage: Coverage  # all models together

    def to_dict(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), **self.coverage.to_dict()}


@dataclass(frozen=True)
class Estimate:
    """Time left, from the measured cost of earlier months: seconds = a·expected + b·missing
    per month (least squares over up to 200 verified runs), divided by the speed-up the last
    parallel backfill achieved."""

    remaining_rows: int
    remaining_months: int
    basis_runs: int
    seconds_per_expected_row: float
    seconds_per_missing_row: float
    sequential_seconds: float | None
    jobs: int
    speedup: float
    seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"remaining_rows": self.remaining_rows, "remaining_months": self.remaining_months,
                "basis_runs": self.basis_runs,
                "seconds_per_expected_row": self.seconds_per_expected_row,
                "seconds_per_missing_row": self.seconds_per_missing_row,
                "sequential_seconds": _round(self.sequential_seconds), "jobs": self.jobs,
                "speedup": round(self.speedup, 2), "seconds": _round(self.seconds)}


@dataclass(frozen=True)
class BacklogReport:
    """`engine report`: remaining work worst first, failures with their errors, an ETA."""

    generated_at: datetime
    overall: Coverage
    months: tuple[MonthLine, ...]  # months with missing rows or not completed, worst first
    days: tuple[RemainingDay, ...]  # days with missing rows, worst first
    failures: tuple[MonthLine, ...]
    estimate: Estimate
    backfills: tuple[BackfillInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"generated_at": self.generated_at.isoformat(), "overall": self.overall.to_dict(),
                "remaining_months": [m.to_dict() for m in self.months],
                "remaining_days": [d.to_dict() for d in self.days],
                "failures": [f.to_dict() for f in self.failures],
                "estimate": self.estimate.to_dict(),
                "recent_backfills": [b.to_dict() for b in self.backfills]}


@dataclass(frozen=True)
class DayRuns:
    month: str
    status: str
    runs: int
    inserted: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"month": self.month, "status": self.status, "runs": self.runs,
                "inserted": self.inserted, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class DailySummary:
    """What the runs of one day did (days as the database's time zone counts them)."""

    day: date
    runs: tuple[DayRuns, ...]
    failures: tuple[tuple[int, str, str, str | None], ...]  # run id, month, command, error
    backfills: tuple[BackfillInfo, ...]

    def totals(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for line in self.runs:
            by_status[line.status] = by_status.get(line.status, 0) + line.runs
        return {"runs": sum(r.runs for r in self.runs), "by_status": dict(sorted(by_status.items())),
                "months": len({r.month for r in self.runs}),
                "inserted": sum(r.inserted for r in self.runs),
                "seconds": round(sum(r.seconds for r in self.runs), 3)}

    def to_dict(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), "totals": self.totals(),
                "runs": [r.to_dict() for r in self.runs],
                "failures": [{"run_id": f[0], "month": f[1], "command": f[2], "error": f[3]}
                             for f in self.failures],
                "backfills": [b.to_dict() for b in self.backfills]}


def build_report(cursor: db.Cursor, models: Iterable[str], *, jobs: int = 3,
                 engine_schema: str = DEFAULT_SCHEMA) -> BacklogReport:
    """The remaining work, failures and an estimate at `jobs` months in parallel."""
    counts = day_counts(cursor, Month(2000, 1), Month(2100, 12), list(models))
    lines = month_lines(cursor, counts, engine_schema=engine_schema)
    remaining = [ln for ln in lines if ln.coverage.missing or ln.status != "completed"]
    remaining.sort(key=lambda ln: (-ln.coverage.missing, ln.month))
    per_day: dict[date, Coverage] = {}
    for count in counts:
        per_day[count.day] = per_day.get(count.day, Coverage(0, 0)) + count.coverage
    days = sorted((RemainingDay(d, c) for d, c in per_day.items() if c.missing),
                  key=lambda r: (-r.coverage.missing, r.day))
    overall = sum((c.coverage for c in counts), Coverage(0, 0))
    failures = tuple(ln for ln in lines if ln.status == "failed")
    now = db.fetch_all(cursor, "SELECT now()")[0][0]
    return BacklogReport(now, overall, tuple(remaining), tuple(days), failures,
                         estimate(cursor, remaining, jobs, engine_schema=engine_schema),
                         tuple(recent_backfills(cursor, 5, engine_schema=engine_schema)))


def estimate(cursor: db.Cursor, remaining: list[MonthLine], jobs: int, *,
             engine_schema: str = DEFAULT_SCHEMA) -> Estimate:
    """Fit the cost of earlier runs and apply it to the `remaining` months."""
    runs = [(float(e), float(i), float(s))
            for e, i, s in db.fetch_all(cursor, sql(RECENT_RUNS, engine_schema))
            if e is not None and s is not None]
    a, b = _fit(runs)
    missing = sum(ln.coverage.missing for ln in remaining)
    sequential = None
    if runs:
        sequential = sum(a * ln.coverage.expected + b * ln.coverage.missing for ln in remaining)
    speedup = 1.0
    if jobs > 1 and (
            row := db.fetch_all(cursor, sql(PARALLEL_SPEEDUP, engine_schema))):
        measured_jobs, wall, busy = row[0]
        if wall and busy:
            speedup = max(1.0, min(float(busy) / float(wall), float(measured_jobs), float(jobs)))
    seconds = sequential / speedup if sequential is not None else None
    return Estimate(missing, len(remaining), len(runs), a, b, sequential, jobs, speedup, seconds)


def daily_summaries(cursor: db.Cursor, days: Iterable[date] | None = None, *,
                    engine_schema: str = DEFAULT_SCHEMA) -> list[DailySummary]:
    """One summary per day in `days` (default: every day that has runs)."""
    chosen = list(days) if days is not None else [
        r[0] for r in db.fetch_all(cursor, sql(DAYS_WITH_RUNS, engine_schema))]
    backfills = {b.id: b for b in recent_backfills(cursor, 10_000, engine_schema=engine_schema)}
    summaries = []
    for day in chosen:
        runs = tuple(DayRuns(r[0], r[1], int(r[2]), int(r[3]), float(r[4]))
                     for r in db.fetch_all(cursor, sql(DAY_RUNS, engine_schema), (day,)))
        failures = tuple((int(r[0]), r[1], r[2], r[3])
                         for r in db.fetch_all(cursor, sql(DAY_FAILURES, engine_schema), (day,)))
        ids = [int(r[0]) for r in db.fetch_all(cursor, sql(DAY_BACKFILLS, engine_schema), (day,))
               ] if backfills else []
        summaries.append(DailySummary(day, runs, failures,
                                      tuple(backfills[i] for i in ids if i in backfills)))
    return summaries


def todays_summary(cursor: db.Cursor, *, engine_schema: str = DEFAULT_SCHEMA) -> DailySummary:
    """The summary of today's runs (today as the database's clock and time zone have it)."""
    return daily_summaries(cursor, [db.fetch_all(cursor, "SELECT current_date")[0][0]],
                           engine_schema=engine_schema)[0]


def _fit(runs: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Seconds per expected row and per inserted row, both ≥ 0."""
    if not runs:
        return 0.0, 0.0
    x = np.array([[e, i] for e, i, _ in runs])
    y = np.array([s for _, _, s in runs])
    if len(runs) >= 2 and np.linalg.matrix_rank(x) == 2:
        (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
        if a >= 0 and b >= 0:
            return float(a), float(b)
    # Too few or degenerate runs: one rate for everything.
    total = x[:, 0].sum()
    return (float(y.sum() / total) if total else 0.0), 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
