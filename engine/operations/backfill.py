"""Backfill: reconcile many months, several at a time, surviving failures.

Plans the months (engine.operations.selection), records the backfill in `reconciliation_backfills`, and runs
`jobs` worker threads, each with its own session (its own connection), taking months from the
plan in order through the throttle (engine.operations.throttle); each month is reconciled with its lock,
takeover and retries by engine.operations.retries. A month another process holds is put back at the end
of the queue once, then waited for briefly, then skipped (or waited for as long as it takes,
with `wait_busy`). connectorx, ADBC and Polars release the GIL, so threads run in parallel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from engine.errors import EngineError, EnvironmentProblem, InputError
from engine.month import locks
from engine.month.session import Session, open_session
from engine.months import Month
from engine.operations import backfills
from engine.operations.alerts import Alerter
from engine.operations.retries import (
    BUSY_GRACE_SECONDS,
    TRANSIENT,
    Event,
    EventCallback,
    MonthOutcome,
    MonthWork,
    RetryPolicy,
    WorkerSession,
)
from engine.operations.selection import DEFAULT_SELECTION, Plan, PlannedMonth, build_plan
from engine.operations.throttle import (
    LIMITED_VIEW,
    LoadSample,
    Throttle,
    ThrottleConfig,
    sample_load,
    sees_all_sessions,
)
from engine.reporting.status import missing_rows
from engine.store import db
from engine.store.config import Settings

__all__ = ["BackfillRequest", "BackfillResult", "Event", "EventCallback", "MonthOutcome", "RetryPolicy",
           "run_backfill", "with_application_name"]

log = logging.getLogger(__name__)
_HEARTBEAT_SECONDS = 2.0


@dataclass(frozen=True)
class BackfillRequest:
    first: Month | None = None
    last: Month | None = None
    order: str = "plan"
    selection: frozenset[str] = DEFAULT_SELECTION
    jobs: int = 3
    wait_busy: bool = False
    busy_grace: float = BUSY_GRACE_SECONDS  # how long a month busy once is waited for later
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    command: str = "run"
    version: str = "v1"
    fix: frozenset[str] = frozenset()  # also repair these classes (engine.repairs.actions.FIXES)

    def to_dict(self) -> dict[str, Any]:
        return {"from": str(self.first) if self.first else None,
                "to": str(self.last) if self.last else None, "order": self.order,
                "only": sorted(self.selection), "jobs": self.jobs, "wait_busy": self.wait_busy,
                "retry": self.retry.to_dict(), "throttle": self.throttle.to_dict(),
                "formula": self.version, "fix": sorted(self.fix)}


@dataclass(frozen=True)
class BackfillResult:
    backfill_id: int | None  # None: nothing was planned, nothing recorded
    command: str
    plan: Plan
    outcomes: tuple[MonthOutcome, ...]
    seconds: float
    throttle: dict[str, Any]
    interrupted: bool = False  # a signal stopped it: the months in progress were finished first

    def counts(self) -> dict[str, int]:
        statuses = [o.status for o in self.outcomes]
        return {
            "planned": len(self.plan.months),
            **{s: statuses.count(s) for s in ("verified", "unverified", "nothing_to_do",
                                               "failed", "interrupted", "skipped")},
            "not_reached": len(self.plan.months) - len(self.outcomes),
            "inserted": sum(o.inserted for o in self.outcomes),
            "retries": sum(max(0, o.tries - 1) for o in self.outcomes),
        }

    @property
    def rows_per_second(self) -> float:
        return self.counts()["inserted"] / self.seconds if self.seconds else 0.0

    @property
    def exit_code(self) -> int:
        """130 interrupted by a signal (the CLI makes it 143 for SIGTERM), 74 (EX_IOERR) a month
        failed on the machine (a full or read-only disk), 2 on its data (or schema), 1 a
        verification failed, 75 (EX_TEMPFAIL) a month still failed on transient errors after
        every retry, else 0."""
        if self.interrupted:
            return 130
        failed = {o.error_kind for o in self.outcomes if o.status == "failed"}
        if "environment" in failed:
            return EnvironmentProblem.exit_code
        if failed - {"transient"}:
            return 2
        if any(o.status == "unverified" for o in self.outcomes):
            return 1
        return 75 if failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {"backfill_id": self.backfill_id, "command": self.command,
                "plan": self.plan.to_dict(), "counts": self.counts(),
                "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows_per_second, 1), "exit_code": self.exit_code,
                "months": [o.to_dict() for o in self.outcomes], "throttle": self.throttle,
                "interrupted": self.interrupted}


def with_application_name(url: str, name: str) -> str:
    """`url` naming its sessions `name` in pg_stat_activity (unless it names them already)."""
    parts = urlsplit(db.check_url(url))
    query = parse_qsl(parts.query)
    if any(key == "application_name" for key, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("application_name", name)], quote_via=quote)))


def run_backfill(settings: Settings, request: BackfillRequest, *, url: str | None = None,
                 on_event: EventCallback | None = None,
                 choose: Callable[[db.Cursor], Plan] | None = None,
                 alerter: Alerter | None = None,
                 stop: threading.Event | None = None) -> BackfillResult:
    """Reconcile the planned months (`choose` picks them; default: `request`'s range and
    selection) with `request.jobs` workers; record the backfill in `reconciliation_backfills`.

    Raises `DatabaseUnavailable`/`SchemaError`/`InputError` before any work starts. Setting
    `stop` (a signal handler does) stops the run cleanly: no new month starts, the months in
    progress finish (or stop before they write), and the result says `interrupted`; a
    `KeyboardInterrupt` stops it at once. Either way the backfill row is closed as
    `interrupted` with its real counts. Failed months do not raise: they are outcomes.
    `alerter` hears of every month that ends failed or unverified, and of missing rows left
    when the run ends.
    """
    if request.jobs < 1:
        raise InputError(f"--jobs must be at least 1, not {request.jobs}")
    url = with_application_name(url or db.resolve_url(settings.database_url, settings.data_dir,
                                                      connect_timeout_s=settings.connect_timeout_s),
                                f"engine-{request.command}")
    emit = on_event or (lambda event: None)
    with open_session(settings, url) as control, db.translated_errors(url):
        with control.transaction() as cursor:
            chosen = choose(cursor) if choose else build_plan(
                cursor, first=request.first, last=request.last, order=request.order,
                selection=request.selection, engine_schema=settings.schema)
        if not chosen.months:  # nothing to do: no record, so a frequent cron job leaves no trail
            emit(Event("plan", plan=chosen))
            return BackfillResult(None, request.command, chosen, (), 0.0, {})
        if request.throttle.load_aware:
            with control.transaction() as cursor:
                if not sees_all_sessions(cursor):
                    log.warning(LIMITED_VIEW)
        with control.transaction() as cursor:
            for gone in backfills.close_abandoned(cursor, locks.BACKFILL_LOCK_CLASS,
                                                  engine_schema=settings.schema):
                log.warning("backfill %s was left running by a process that is gone; closed it "
                            "as interrupted", gone)
            backfill_id = backfills.start_backfill(cursor, request.command, request.to_dict(),
                                                  [m.to_dict() for m in chosen.months], request.jobs,
                                                  engine_schema=settings.schema)
            locks.try_lock(cursor, (locks.BACKFILL_LOCK_CLASS, backfill_id % 2**31))
        emit(Event("plan", detail=str(backfill_id), plan=chosen))
        runner = _Runner(settings, url, request, backfill_id, chosen, emit,
                         alerter.month_failed if alerter else None, stop or threading.Event())

        def heartbeat(status: str, error: str | None = None, *, at_once: bool = False) -> None:
            def update(cursor: db.Cursor) -> None:
                counts = runner.counts()
                if at_once:  # the workers are cut short: count what their runs committed
                    backfills.interrupt_runs(cursor, backfill_id, "interrupted",
                                             engine_schema=settings.schema)
                    verified, others, inserted = backfills.counts_of_runs(
                        cursor, backfill_id, engine_schema=settings.schema)
                    counts |= {"verified": verified, "failed": others, "inserted": inserted}
                backfills.update_backfill(cursor, backfill_id, status=status, counts=counts,
                                         throttle=runner.throttle.record(), error=error,
                                         engine_schema=settings.schema)
            try:
                with db.translated_errors(url), control.transaction() as cursor:
                    update(cursor)
            except TRANSIENT:
                if status == "running":
                    raise
                # The control connection died during the run (a server restart): use a new one.
                with db.connect(url) as conn, db.translated_errors(url), db.transaction(
                        conn, lock_timeout_ms=settings.lock_timeout_ms,
                        statement_timeout_ms=settings.statement_timeout_ms) as cursor:
                    update(cursor)

        try:
            runner.run(heartbeat)
        except KeyboardInterrupt:
            _quietly(heartbeat, "interrupted", "interrupted", at_once=True)
            raise
        except BaseException as error:
            _quietly(heartbeat, "failed", f"{type(error).__name__}: {error}")
            raise
        result = runner.result()
        if result.interrupted:
            heartbeat("interrupted", "interrupted")
        else:
            heartbeat("completed" if result.exit_code == 0 else "failed",
                      None if result.exit_code == 0 else _summary_error(result))
        if alerter is not None and not result.interrupted:  # an operator stopped it: no alarm
            _quietly(_alert_leftovers, control, result, alerter)
    return result


def _alert_leftovers(control: Session, result: BackfillResult, alerter: Alerter) -> None:
    """Alert when months of the plan still miss rows: failed, unverified or never reached.
    Months another process took are its business; months that fail as they did before the
    run were alerted already."""
    outcomes = {o.month: o for o in result.outcomes}
    reasons: dict[Month, str] = {}
    for planned in result.plan.months:
        outcome = outcomes.get(planned.month)
        if outcome is None:
            reasons[planned.month] = "not reached"
        elif outcome.status in ("failed", "unverified"):
            reasons[planned.month] = outcome.error_kind or outcome.status
    if not reasons:
        return
    repeated = all(
        (o := outcomes.get(m)) is not None and o.previous is not None
        and o.previous.status == "failed" and o.previous.last_error == o.error for m in reasons)
    if repeated:
        return
    with db.translated_errors(control.url), control.transaction() as cursor:
        missing = missing_rows(cursor, reasons, [m.name for m in control.models])
    alerter.missing_rows(missing, reasons)


class _Runner:
    def __init__(self, settings: Settings, url: str, request: BackfillRequest, backfill_id: int,
                 plan: Plan, emit: EventCallback,
                 alert: Callable[[MonthOutcome], None] | None, stop: threading.Event) -> None:
        self.settings, self.url, self.request, self.backfill_id = settings, url, request, backfill_id
        self.plan, self.emit, self.alert = plan, emit, alert
        self.throttle = Throttle(request.throttle, request.jobs,
                                 on_decision=lambda d: emit(Event("throttle", decision=d)))
        self.stop = stop  # set by a signal (a clean stop) or by a bug in a worker
        self.work = MonthWork(backfill_id=backfill_id, retry=request.retry,
                              wait_busy=request.wait_busy, busy_grace=request.busy_grace,
                              version=request.version, fix=request.fix,
                              command=request.command, emit=emit, stop=self.stop,
                              jobs=min(request.jobs, max(1, len(plan.months))))
        self.started = time.monotonic()
        self.outcomes: dict[Month, MonthOutcome] = {}
        self._queue: deque[tuple[PlannedMonth, bool]] = deque((m, False) for m in plan.months)
        self._lock = threading.Lock()
        self._bug: BaseException | None = None

    def run(self, heartbeat: Callable[[str], None]) -> None:
        workers = [threading.Thread(target=self._work, name=f"backfill-{i + 1}", daemon=True)
                   for i in range(min(self.request.jobs, len(self.plan.months)))]
        for worker in workers:
            worker.start()
        try:
            beat = time.monotonic()
            while any(worker.is_alive() for worker in workers):
                for worker in workers:
                    worker.join(0.2)
                if time.monotonic() - beat >= _HEARTBEAT_SECONDS:
                    beat = time.monotonic()
                    _quietly(heartbeat, "running")
            self.throttle.drain(self.stop)
        except KeyboardInterrupt:
            # A second signal: stop now. The workers are daemon threads: their connections
            # close with the process, PostgreSQL rolls back what they had not committed, and a
            # committed month left unverified is recorded as interrupted when next taken over.
            self.stop.set()
            raise
        except BaseException:
            self.stop.set()
            log.warning("stopping: waiting for the months in progress to finish")
            for worker in workers:
                worker.join()
            raise
        if self._bug is not None:
            raise self._bug

    def counts(self) -> dict[str, int]:
        with self._lock:
            outcomes = list(self.outcomes.values())
        statuses = [o.status for o in outcomes]
        return {"verified": statuses.count("verified") + statuses.count("nothing_to_do"),
                "failed": statuses.count("failed") + statuses.count("unverified")
                + statuses.count("interrupted"),
                "skipped": statuses.count("skipped"),
                "inserted": sum(o.inserted for o in outcomes),
                "retries": sum(max(0, o.tries - 1) for o in outcomes)}

    def result(self) -> BackfillResult:
        ordered = tuple(self.outcomes[m.month] for m in self.plan.months if m.month in self.outcomes)
        return BackfillResult(self.backfill_id, self.request.command, self.plan, ordered,
                              time.monotonic() - self.started, self.throttle.record(),
                              interrupted=self.stop.is_set() and self._bug is None)

    def _next(self) -> tuple[PlannedMonth, bool] | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def _work(self) -> None:
        worker = WorkerSession(self.settings, self.url)
        ready_at = 0.0
        try:
            while not self.stop.is_set() and (item := self._next()) is not None:
                planned, deferred = item
                if not self.throttle.acquire(str(planned.month), ready_at, self.stop):
                    break
                started, outcome = time.monotonic(), None
                try:
                    outcome = self.work.run(worker, planned, deferred)
                finally:
                    worker.unlock(planned.month)
                    ready_at = self.throttle.release(
                        str(planned.month), started_at=started,
                        inserted=outcome.inserted if outcome else 0,
                        sample=self._sample(worker, outcome))
                if outcome.reason == "busy" and not deferred and not self.request.wait_busy:
                    log.info("%s is being reconciled by another process; coming back to it later",
                             planned.month)
                    with self._lock:
                        self._queue.append((planned, True))
                    self.emit(Event("deferred", planned.month, "busy: coming back to it later"))
                    continue
                self._finish(outcome)
        except BaseException as error:  # a bug: stop the run and show it
            self._bug = error
            self.stop.set()
        finally:
            worker.discard()

    def _finish(self, outcome: MonthOutcome) -> None:
        with self._lock:
            self.outcomes[outcome.month] = outcome
        self.emit(Event("done", outcome.month, outcome.status, outcome=outcome))
        if outcome.status in ("failed", "unverified") and self.alert:
            self.alert(outcome)

    def _sample(self, worker: WorkerSession, outcome: MonthOutcome | None) -> LoadSample | None:
        if not self.request.throttle.load_aware or outcome is None or outcome.status == "skipped":
            return None
        try:
            with worker.transaction() as cursor:
                return sample_load(cursor, outcome.timings.get("load"), outcome.inserted)
        except EngineError:
            log.debug("could not sample the load", exc_info=True)
            return None

def _summary_error(result: BackfillResult) -> str:
    bad = [o for o in result.outcomes if o.status in ("failed", "unverified")]
    return "; ".join(f"{o.month}: {o.error}" for o in bad[:5])


def _quietly(function: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        function(*args, **kwargs)
    except Exception:  # bookkeeping must not hide the run's own outcome
        log.warning("could not update the backfill record", exc_info=True)
