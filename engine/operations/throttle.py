"""Throttling a backfill so it never hurts a live database.

The unit of work is a month (one transaction, so a month is applied whole or not at all), so
the throttle acts between months:
- `max_rows_per_second`: after a month inserted n rows, no month starts (and the run does not
  end) before the run's rows / elapsed time is back at the limit;
- `pause_seconds`: each worker rests this long after each month;
- `load_aware`: after each month it samples the database (other sessions' active backends and
  lock waits from `pg_stat_activity`, and the merge's own latency per 1,000 rows against its
  best so far). When busy it halves the months in flight (the batch) and doubles the pause;
  when calm again it recovers one step at a time.
Every decision is logged and kept in the run record (`reconciliation_backfills.throttle`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from engine.store import db

log = logging.getLogger(__name__)

# Other client sessions of this database only: the engine's connections carry
# application_name engine-…. (A role without pg_monitor sees no other role's state.)
LOAD_SAMPLE = """
SELECT count(*) FILTER (WHERE state = 'active'),
       count(*) FILTER (WHERE wait_event_type = 'Lock')
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND datname = current_database() AND coalesce(application_name, '') NOT LIKE 'engine%'
"""

# Without pg_read_all_stats (pg_monitor has it) pg_stat_activity hides other roles' state.
SEES_ALL_SESSIONS = "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')"
LIMITED_VIEW = ("note: the load-aware throttle sees only this role's own sessions (the role "
                "lacks pg_read_all_stats, e.g. `GRANT pg_monitor TO …`): it judges the load by "
                "those and by the merge's latency")

_MIN_ROWS_FOR_LATENCY = 1_000
_FIRST_PAUSE = 1.0  # seconds: the pause a first back-off sets when none was configured


@dataclass(frozen=True)
class ThrottleConfig:
    max_rows_per_second: float | None = None
    pause_seconds: float = 0.0
    load_aware: bool = False
    busy_backends: int = 4  # other sessions' active backends at which the database is busy
    busy_lock_waits: int = 1  # sessions waiting on a lock at which it is busy
    latency_factor: float = 3.0  # merge slower than its best by this factor: busy
    max_pause_seconds: float = 30.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LoadSample:
    active: int
    lock_waits: int
    merge_seconds_per_krow: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """One throttle decision: `back_off`, `recover` or `wait` (pacing the rows per second)."""

    at: float  # seconds since the run started
    month: str | None
    action: str
    reason: str
    jobs: int
    pause: float
    wait: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {"at": round(self.at, 3), "month": self.month, "action": self.action,
                "reason": self.reason, "jobs": self.jobs, "pause": round(self.pause, 3),
                "wait": round(self.wait, 3)}


def sample_load(cursor: db.Cursor, merge_seconds: float | None = None,
                inserted: int = 0) -> LoadSample:
    """Read the database's load now; `merge_seconds` for `inserted` rows is the last merge's."""
    active, waits = db.fetch_all(cursor, LOAD_SAMPLE)[0]
    latency = None
    if merge_seconds is not None and inserted >= _MIN_ROWS_FOR_LATENCY:
        latency = merge_seconds / (inserted / 1000)
    return LoadSample(int(active), int(waits), latency)


def sees_all_sessions(cursor: db.Cursor) -> bool:
    """True when this role may see every session's state in pg_stat_activity."""
    return bool(db.fetch_all(cursor, SEES_ALL_SESSIONS)[0][0])


class Throttle:
    """Shared by a run's workers: `acquire` before a month, `release` after it, `drain` at the
    end. Thread-safe."""

    def __init__(self, config: ThrottleConfig, jobs: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_decision: Callable[[Decision], None] | None = None) -> None:
        self.config, self.jobs, self.clock, self.on_decision = config, jobs, clock, on_decision
        self.jobs_allowed = jobs
        self.pause = config.pause_seconds
        self.decisions: list[Decision] = []
        self.waited = 0.0
        self._start = clock()
        self._paid_until = self._start
        self._running = 0
        self._best_latency: float | None = None
        self._cond = threading.Condition()

    def acquire(self, month: str, ready_at: float, stop: threading.Event) -> bool:
        """Block until `month` may start: a slot is free, the worker's pause (`ready_at`) is
        over and the rows per second are back under the limit. False when `stop` is set."""
        with self._cond:
            announced = False
            while not stop.is_set():
                now = self.clock()
                start_at = max(ready_at, self._paid_until)
                if self._running < self.jobs_allowed and now >= start_at:
                    self._running += 1
                    return True
                paced = self.config.max_rows_per_second and self._paid_until > max(now, ready_at)
                if paced and not announced:
                    announced = True
                    wait = self._paid_until - now
                    self.waited += wait
                    self._decide(month, "wait", f"{wait:.2f} s to stay under "
                                 f"{self.config.max_rows_per_second:,.0f} rows/s", wait=wait)
                timeout = start_at - now if now < start_at else 0.25
                self._cond.wait(min(max(timeout, 0.01), 0.25))
            return False

    def release(self, month: str, *, started_at: float, inserted: int,
                sample: LoadSample | None = None) -> float:
        """Account for a finished month; return when this worker may start its next one."""
        with self._cond:
            self._running -= 1
            if rate := self.config.max_rows_per_second:
                self._paid_until = max(self._paid_until, started_at) + inserted / rate
            if self.config.load_aware and sample is not None:
                self._adapt(month, sample)
            self._cond.notify_all()
            return self.clock() + self.pause

    def drain(self, stop: threading.Event) -> None:
        """Wait until the rows inserted are paid for, so the run's average holds the limit."""
        with self._cond:
            wait = self._paid_until - self.clock()
            if wait > 0 and not stop.is_set():
                self.waited += wait
                self._decide(None, "wait", f"{wait:.2f} s at the end to stay under "
                             f"{self.config.max_rows_per_second:,.0f} rows/s", wait=wait)
        if wait > 0:
            stop.wait(wait)

    def busy_reasons(self, sample: LoadSample) -> list[str]:
        """Why `sample` says the database is busy (empty: it is calm). Tracks the best latency."""
        config, reasons = self.config, []
        if sample.active >= config.busy_backends:
            reasons.append(f"{sample.active} other active session(s)")
        if sample.lock_waits >= config.busy_lock_waits:
            reasons.append(f"{sample.lock_waits} session(s) waiting on a lock")
        latency = sample.merge_seconds_per_krow
        if latency is not None:
            best = self._best_latency
            if best is None or latency < best:
                self._best_latency = latency
            elif latency > config.latency_factor * best:
                reasons.append(f"merge {latency * 1000:.0f} ms per 1,000 rows, "
                               f"{latency / best:.1f}× its best")
        return reasons

    def record(self) -> dict[str, object]:
        """The run record's view: the configuration, every decision, the time spent waiting."""
        with self._cond:
            return {"config": self.config.to_dict(), "jobs": self.jobs,
                    "jobs_allowed": self.jobs_allowed, "pause": round(self.pause, 3),
                    "waited_seconds": round(self.waited, 3),
                    "decisions": [d.to_dict() for d in self.decisions]}

    def _adapt(self, month: str, sample: LoadSample) -> None:
        reasons = self.busy_reasons(sample)
        base, ceiling = self.config.pause_seconds, self.config.max_pause_seconds
        if reasons:
            jobs, pause = max(1, self.jobs_allowed // 2), min(ceiling, max(self.pause * 2, _FIRST_PAUSE))
            if (jobs, pause) != (self.jobs_allowed, self.pause):
                self.jobs_allowed, self.pause = jobs, pause
                self._decide(month, "back_off", "; ".join(reasons))
        elif self.jobs_allowed < self.jobs or self.pause > base:
            self.jobs_allowed = min(self.jobs, self.jobs_allowed + 1)
            self.pause = self.pause / 2 if self.pause / 2 > base + 0.1 else base
            self._decide(month, "recover", f"calm: {sample.active} other active session(s), "
                         f"{sample.lock_waits} lock wait(s)")

    def _decide(self, month: str | None, action: str, reason: str, wait: float = 0.0) -> None:
        decision = Decision(self.clock() - self._start, month, action, reason, self.jobs_allowed,
                            self.pause, wait)
        self.decisions.append(decision)
        log.info("throttle: %s%s: %s → %d month(s) at a time, pause %.1f s", action,
                 f" before {month}" if month and action == "wait" else f" after {month}" if month else "",
                 reason, decision.jobs, decision.pause)
        if self.on_decision:
            self.on_decision(decision)
