"""The live view of a backfill: months done / running / failed, rows inserted, rate, success
rate and ETA. Built in-process from a run's events (`Tracker`), or from the database for a run
in another process (`read_live`), so `engine run`'s dashboard and `engine status --watch`
show the same object.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.month import locks, progress
from engine.months import Month
from engine.store import db
from engine.store.schema import DEFAULT_SCHEMA, sql

if TYPE_CHECKING:  # annotations only: the live view imports no pipeline
    from engine.operations.retries import Event

_RECENT = 6

BACKFILL_ROW = """
SELECT b.id, b.command, b.status, extract(epoch FROM coalesce(b.finished_at, now()) - b.started_at),
       b.plan::text, b.months_verified, b.months_failed, b.months_skipped, b.rows_inserted,
       b.retries, b.throttle::text,
       EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
               AND l.classid = $1::int8::oid AND l.objid = (b.id % 2147483648)::int8::oid
               AND l.objsubid = 2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
FROM {engine}.reconciliation_backfills b ORDER BY b.id DESC LIMIT 1
"""

BACKFILL_RUNS = """
SELECT month, status, (rows->>'inserted')::bigint, extract(epoch FROM finished_at - started_at)
FROM {engine}.reconciliation_runs WHERE backfill_id = $1 AND finished_at IS NOT NULL ORDER BY id
"""

RUNNING_SINCE = """
SELECT month, extract(epoch FROM now() - started_at) FROM {engine}.reconciliation_progress
WHERE month = ANY($1) AND status = 'in_progress'
"""


@dataclass(frozen=True)
class Running:
    month: str
    step: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"month": self.month, "step": self.step, "seconds": round(self.seconds, 1)}


@dataclass(frozen=True)
class LiveView:
    backfill_id: int | None
    command: str
    state: str  # running | completed | failed | interrupted | stopped (its process is gone)
    elapsed: float
    months_total: int
    done: int
    failed: int
    skipped: int
    running: tuple[Running, ...]
    rows_inserted: int
    retries: int
    eta_seconds: float | None
    throttle: str = ""
    recent: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rows_per_second(self) -> float:
        return self.rows_inserted / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def success_rate(self) -> float | None:
        """Months verified among the months finished (skipped ones aside), in percent."""
        finished = self.done + self.failed
        return 100.0 * self.done / finished if finished else None

    @property
    def pending(self) -> int:
        return max(0, self.months_total - self.done - self.failed - self.skipped - len(self.running))

    def to_dict(self) -> dict[str, Any]:
        return {"backfill_id": self.backfill_id, "command": self.command, "state": self.state,
                "elapsed": round(self.elapsed, 1), "months_total": self.months_total,
                "done": self.done, "failed": self.failed, "skipped": self.skipped,
                "pending": self.pending, "running": [r.to_dict() for r in self.running],
                "rows_inserted": self.rows_inserted,
                "rows_per_second": round(self.rows_per_second, 1),
                "success_rate": None if self.success_rate is None else round(self.success_rate, 1),
                "retries": self.retries,
                "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
                "throttle": self.throttle, "recent": list(self.recent)}


def eta(elapsed: float, done_weight: int, remaining_weight: int) -> float | None:
    """Seconds left if the remaining months (weighed by source records) go as fast as the
    finished ones did."""
    if remaining_weight == 0:
        return 0.0
    if done_weight == 0 or elapsed <= 0:
        return None
    return elapsed * remaining_weight / done_weight


class Tracker:
    """Builds a `LiveView` from a backfill's events; feed it `on_event`. Thread-safe."""

    def __init__(self, command: str = "run") -> None:
        self.command = command
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._weights: dict[Month, int] = {}
        self._running: dict[Month, tuple[str, float]] = {}
        self._finished: dict[Month, str] = {}
        self._inserted = self._retries = 0
        self._throttle = ""
        self._recent: list[str] = []
        self.backfill_id: int | None = None
        self.state = "running"

    def on_event(self, event: Event) -> None:
        with self._lock:
            if event.kind == "plan" and event.plan is not None:
                self._start = time.monotonic()
                self.backfill_id = int(event.detail) if event.detail.isdigit() else None
                self._weights = {m.month: max(m.records, 1) for m in event.plan.months}
            elif event.kind == "start" and event.month:
                self._running[event.month] = ("starting", time.monotonic())
            elif event.kind == "step" and event.month in self._running:
                self._running[event.month] = (event.detail, self._running[event.month][1])
            elif event.kind == "retry" and event.month:
                self._retries += 1
                self._running.pop(event.month, None)
                self._note(f"{event.month} retry: {event.detail}")
            elif event.kind == "takeover" and event.month:
                self._note(f"{event.month} taken over from {event.detail}")
            elif event.kind == "deferred" and event.month:
                self._note(f"{event.month} is busy in another process; later")
            elif event.kind == "throttle" and event.decision is not None:
                d = event.decision
                self._throttle = f"{d.action}: {d.reason} → {d.jobs} at a time, pause {d.pause:.1f} s"
                self._note(f"throttle {self._throttle}")
            elif event.kind == "done" and event.outcome is not None:
                outcome = event.outcome
                self._running.pop(outcome.month, None)
                self._finished[outcome.month] = outcome.status
                self._inserted += outcome.inserted
                note = f"{outcome.month} {outcome.status}"
                if outcome.status in ("verified", "nothing_to_do"):
                    note += f" · {outcome.inserted:,} inserted · {outcome.seconds:.2f} s"
                else:
                    note += f" · {outcome.reason or outcome.error or ''}"
                self._note(note)

    def view(self) -> LiveView:
        with self._lock:
            now = time.monotonic()
            statuses = list(self._finished.values())
            done = statuses.count("verified") + statuses.count("nothing_to_do")
            failed = statuses.count("failed") + statuses.count("unverified")
            finished_weight = sum(self._weights.get(m, 1) for m in self._finished)
            remaining = sum(w for m, w in self._weights.items() if m not in self._finished)
            elapsed = now - self._start
            return LiveView(
                self.backfill_id, self.command, self.state, elapsed, len(self._weights), done,
                failed, statuses.count("skipped"),
                tuple(Running(str(m), step, now - t) for m, (step, t) in sorted(self._running.items())),
                self._inserted, self._retries, eta(elapsed, finished_weight, remaining),
                self._throttle, tuple(self._recent))

    def _note(self, line: str) -> None:
        self._recent = [*self._recent, line][-_RECENT:]


def read_live(cursor: db.Cursor, *, engine_schema: str = DEFAULT_SCHEMA) -> LiveView | None:
    """The newest backfill as the database shows it (None when there has been none)."""
    rows = db.fetch_all(cursor, sql(BACKFILL_ROW, engine_schema), (locks.BACKFILL_LOCK_CLASS,))
    if not rows:
        return None
    (backfill_id, command, status, elapsed, plan_text, verified, failed, skipped, inserted,
     retries, throttle_text, alive) = rows[0]
    plan = {m["month"]: max(int(m["records"]), 1) for m in json.loads(plan_text)}
    runs = db.fetch_all(cursor, sql(BACKFILL_RUNS, engine_schema), (int(backfill_id),))
    finished = {r[0] for r in runs if r[1] in ("verified", "unverified", "failed")}
    running: tuple[Running, ...] = ()
    if alive and plan:  # a month is running while its lock is held
        months = sorted(Month.parse(m) for m in plan)
        states = progress.month_states(cursor, months[0], months[-1], engine_schema=engine_schema)
        held = [str(m) for m, s in states.items() if s.locked and str(m) in plan]
        since = {r[0]: float(r[1])
                 for r in db.fetch_all(cursor, sql(RUNNING_SINCE, engine_schema), (held,))}
        running = tuple(Running(m, "", since.get(m, 0.0)) for m in sorted(held))
    recent = tuple(f"{r[0]} {r[1]} · {int(r[2] or 0):,} inserted · {float(r[3] or 0):.2f} s"
                   for r in runs[-_RECENT:])
    throttle = json.loads(throttle_text or "{}")
    decisions = throttle.get("decisions", [])
    summary = ""
    if decisions:
        last = decisions[-1]
        summary = (f"{last['action']}: {last['reason']} → {last['jobs']} at a time, "
                   f"pause {last['pause']:.1f} s")
    state = "stopped" if status == "running" and not alive else status
    done_weight = sum(plan[m] for m in finished if m in plan)
    remaining = sum(w for m, w in plan.items() if m not in finished)
    return LiveView(int(backfill_id), command, state, float(elapsed), len(plan), int(verified),
                    int(failed), int(skipped), running, int(inserted), int(retries),
                    eta(float(elapsed), done_weight, remaining) if state == "running" else None,
                    summary, recent)
