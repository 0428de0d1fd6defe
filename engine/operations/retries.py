"""One month of a backfill: its lock, a stale row taken over, its tries and retries.

The worker holds the month's advisory lock (session-level and re-entrant, so the pipeline's
own lock nests inside it), skips a month another process completed since the plan was made,
takes over a stale `in_progress` row, remembers the source's fingerprint and calls
`reconcile.reconcile_month`. Transient failures (lock or statement timeout, serialization
failure, deadlock, lost connection, server restart) are retried on a new session after a
bounded exponential backoff with jitter; data errors are not. Every failed try is stored on
the month's progress row (attempts, retries, last error and its kind).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from engine.errors import (
    DatabaseUnavailable,
    EngineError,
    EnvironmentProblem,
    InputError,
    Interrupted,
    SchemaError,
    SourceDataError,
)
from engine.month import locks, progress
from engine.month.reconcile import MonthResult, reconcile_month
from engine.month.session import Session, open_session
from engine.months import Month
from engine.operations.selection import Plan, PlannedMonth
from engine.operations.throttle import Decision
from engine.store import db
from engine.store.config import Settings

log = logging.getLogger(__name__)

#: Worth trying again on a new connection.
TRANSIENT = (db.TransientDatabaseError, DatabaseUnavailable)
#: How long a month that was busy once is waited for when its turn comes again (long enough
#: for the backend of a killed process to notice and let its lock go).
BUSY_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; the n-th failure waits between half and all of
    min(cap, base · 2^(n-1)) seconds (equal jitter, so runners that failed together spread out)."""

    attempts: int = 4
    base_seconds: float = 0.5
    cap_seconds: float = 30.0

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** (failures - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)

    def to_dict(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "base_seconds": self.base_seconds,
                "cap_seconds": self.cap_seconds}

@dataclass(frozen=True)
class MonthOutcome:
    """How a month ended in this backfill: `verified`, `unverified`, `nothing_to_do`, `failed`,
    `interrupted` (a signal stopped it before it wrote) or `skipped` (`reason`: busy,
    completed_meanwhile, taken_over)."""

    month: Month
    status: str
    tries: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    run_id: int | None = None
    error: str | None = None
    error_kind: str | None = None  # transient | data | schema | input | error | verification
    reason: str | None = None
    previous: progress.MonthState | None = None

    @property
    def inserted(self) -> int:
        return self.rows.get("inserted", 0)

    def to_dict(self) -> dict[str, Any]:
        return {"month": str(self.month), "status": self.status, "tries": self.tries,
                "rows": self.rows, "seconds": round(self.seconds, 4), "run_id": self.run_id,
                "error": self.error, "error_kind": self.error_kind, "reason": self.reason}


@dataclass(frozen=True)
class Event:
    """What a backfill reports while it works: plan, start, step, retry, takeover, done,
    throttle."""

    kind: str
    month: Month | None = None
    detail: str = ""
    outcome: MonthOutcome | None = None
    plan: Plan | None = None
    decision: Decision | None = None


EventCallback = Callable[[Event], None]

class WorkerSession:
    """One worker's session, opened on demand and replaced after a transient failure, and the
    month locks it holds."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings, self.url = settings, url
        self.held: set[Month] = set()
        self._session: Session | None = None
        self._stack: ExitStack | None = None

    def session(self) -> Session:
        if self._session is None:
            stack = ExitStack()
            self._session = stack.enter_context(open_session(self.settings, self.url))
            self._stack = stack
        return self._session

    @contextmanager
    def transaction(self) -> Iterator[db.Cursor]:
        with db.translated_errors(self.url), self.session().transaction() as cursor:
            yield cursor

    def try_lock(self, month: Month) -> bool:
        if month in self.held:
            return True
        with self.transaction() as cursor:
            got = locks.try_lock(cursor, locks.month_lock_key(month))
        if got:
            self.held.add(month)
        return got

    def unlock(self, month: Month) -> None:
        if month not in self.held:
            return
        self.held.discard(month)
        try:
            with self.transaction() as cursor:
                locks.unlock(cursor, locks.month_lock_key(month))
        except EngineError:
            self.discard()  # the connection is gone, and the lock with it

    def discard(self) -> None:
        stack, self._stack, self._session = self._stack, None, None
        self.held.clear()
        if stack is not None:
            try:
                stack.close()
            except Exception:  # closing a broken connection; nothing to save
                log.debug("closing a broken session failed", exc_info=True)

class MonthWork:
    """Reconciles one month at a time for a backfill; shared by its workers (thread-safe:
    everything it changes is in the database or in the worker's own session)."""

    def __init__(self, *, backfill_id: int, retry: RetryPolicy, wait_busy: bool, version: str,
                 command: str, emit: EventCallback, stop: threading.Event,
                 busy_grace: float = BUSY_GRACE_SECONDS, fix: frozenset[str] = frozenset(),
                 jobs: int = 1) -> None:
        self.backfill_id, self.retry, self.wait_busy = backfill_id, retry, wait_busy
        self.busy_grace, self.fix = busy_grace, fix
        self.jobs = jobs  # months at once in this process: they share the memory budget
        self.version, self.command, self.emit, self.stop = version, command, emit, stop
        self.rng = random.Random()

    def run(self, worker: WorkerSession, planned: PlannedMonth, deferred: bool) -> MonthOutcome:
        """Reconcile `planned.month` with retries; `deferred`: it was busy once already."""
        month, retry = planned.month, self.retry
        start, failures, tries = time.monotonic(), 0, 0
        attempts = planned.previous.attempts if planned.previous else 0
        prepared = False

        def outcome(status: str, **fields: Any) -> MonthOutcome:
            return MonthOutcome(month, status, tries, seconds=time.monotonic() - start,
                                previous=planned.previous, **fields)

        while True:
            try:
                if not self._lock_month(worker, month, deferred):
                    return outcome("skipped", reason="busy",
                                   error=f"{month} is being reconciled by another process")
                if not prepared:
                    prepared = True
                    if skipped := self._prepare(worker, planned):
                        return outcome("skipped", reason=skipped)
                with worker.transaction() as cursor:
                    state = progress.month_states(cursor, month, month,
                                                  engine_schema=worker.settings.schema).get(month)
                    attempts = state.attempts if state else 0
                tries += 1
                self.emit(Event("start", month, f"try {tries}"))
                result = reconcile_month(
                    worker.session(), month, version=self.version, fix=self.fix,
                    command=self.command, stop=self.stop, backfill_id=self.backfill_id,
                    jobs=self.jobs, on_step=lambda m, step: self.emit(Event("step", m, step)))
            except Interrupted as error:  # stopped before it wrote: recorded as interrupted
                return outcome("interrupted", error=str(error), error_kind="interrupted")
            except TRANSIENT as error:
                failures += 1
                worker.discard()
                final = failures >= retry.attempts or self.stop.is_set()
                if not self._record(worker, month, error, "transient", final, attempts + 1):
                    return outcome("skipped", reason="taken_over", error=str(error))
                if final:
                    log.error("%s failed after %d tries: %s", month, failures, error)
                    return outcome("failed", error=str(error), error_kind="transient")
                delay = retry.delay(failures, self.rng)
                log.warning("%s: try %d failed (%s); trying again in %.2f s", month, failures,
                            error, delay)
                self.emit(Event("retry", month, f"try {failures} failed: {error}; "
                                f"next in {delay:.2f} s"))
                if self.stop.wait(delay):
                    return outcome("failed", error=str(error), error_kind="transient")
                continue
            except EngineError as error:
                kind = _error_kind(error)
                log.error("%s failed (%s, not retried): %s", month, kind, error)
                self._record(worker, month, error, kind, True, attempts + 1)
                return outcome("failed", error=str(error), error_kind=kind)
            return self._done(worker, planned, result, tries, start)

    def _done(self, worker: WorkerSession, planned: PlannedMonth, result: MonthResult,
              tries: int, start: float) -> MonthOutcome:
        month = planned.month
        if result.status == "unverified":
            try:
                with worker.transaction() as cursor:
                    progress.mark_error_kind(cursor, month, "verification",
                                             engine_schema=worker.settings.schema)
            except EngineError:  # bookkeeping only: the month itself is done and recorded
                log.warning("could not record the error kind of %s", month, exc_info=True)
        error = None
        if result.verdict is not None and not result.verdict.verified:
            error = "verification failed: " + "; ".join(
                f"{c.name}: {c.detail}" for c in result.verdict.failed)
        return MonthOutcome(month, result.status, tries, dict(result.rows), dict(result.timings),
                            time.monotonic() - start, result.run_id, error,
                            "verification" if error else None, previous=planned.previous)

    def _lock_month(self, worker: WorkerSession, month: Month, deferred: bool) -> bool:
        """Take the month's lock: at once; or, for a month already put back once, within
        `busy_grace` seconds; or, with `wait_busy`, whenever it is free."""
        patience = float("inf") if self.wait_busy else self.busy_grace if deferred else 0.0
        deadline, announced = time.monotonic() + patience, False
        while not worker.try_lock(month):
            if time.monotonic() >= deadline or self.stop.is_set():
                return False
            if not announced:
                announced = True
                log.info("%s is being reconciled by another process; waiting for it", month)
            self.stop.wait(0.2)
        return True

    def _prepare(self, worker: WorkerSession, planned: PlannedMonth) -> str | None:
        """With the lock held: skip a month another process completed since the plan was made;
        take over a stale `in_progress` row (its process is gone, or it would hold the lock)."""
        month = planned.month
        with worker.transaction() as cursor:
            state = progress.month_states(cursor, month, month,
                                          engine_schema=worker.settings.schema).get(month)
            if state is None:
                return None
            previous_run = planned.previous.last_run_id if planned.previous else None
            if state.status == "completed" and state.last_run_id != previous_run:
                log.info("%s was completed by another process meanwhile; skipping it", month)
                return "completed_meanwhile"
            if state.status == "in_progress":
                closed = progress.close_abandoned_runs(
                    cursor, month, "abandoned: its process stopped; taken over by a later run",
                    engine_schema=worker.settings.schema)
                runs = ", ".join(f"run {run} (pid {pid})" for run, pid in closed) or "no open run"
                log.warning("%s was left in progress by %s, whose process is gone; taking it over",
                            month, runs)
                self.emit(Event("takeover", month, runs))
        return None

    def _record(self, worker: WorkerSession, month: Month, error: EngineError, kind: str, final: bool,
                attempts: int) -> bool:
        """Store a failed try on the month's row, under its lock, on a working session.
        False when another process took the month meanwhile."""
        try:
            if not worker.try_lock(month):
                log.warning("%s was taken over by another process after try %d failed", month,
                            attempts)
                return False
            with worker.transaction() as cursor:
                schema = worker.settings.schema
                progress.close_abandoned_runs(cursor, month, str(error), engine_schema=schema)
                progress.record_attempt(cursor, month, attempts=attempts, error=str(error),
                                        kind=kind, final=final, engine_schema=schema)
        except EngineError:
            worker.discard()
            log.warning("could not record the failure of %s", month, exc_info=True)
        return True


def _error_kind(error: EngineError) -> str:
    if isinstance(error, EnvironmentProblem):
        return "environment"
    if isinstance(error, SourceDataError):
        return "data"
    if isinstance(error, SchemaError):
        return "schema"
    if isinstance(error, InputError):
        return "input"
    return "error"
