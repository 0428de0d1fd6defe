"""One month end to end: extract → recompute → diff → load (and repair) → verify → record.

The one orchestrator of a month: the only module that calls several steps
(`engine.operations.review` reuses its `examine` for `engine diff` and `engine plan`). It holds
no SQL and no maths.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from engine import formula
from engine.errors import EngineError, InputError, Interrupted, PlanOutdated, SourceDataError, quoted
from engine.month import diff, extract, fingerprints, progress, slices, summaries, verify
from engine.month.examine import Examined
from engine.month.examine import examine as examine_month
from engine.month.session import Session, month_lock
from engine.month.write import SnapshotMoved, Written, row_counts, write_month
from engine.months import Days, Month
from engine.repairs import actions, causes, plans
from engine.store import db, resources
from engine.store.paths import parts
from engine.store.schema import CALCULATIONS

log = logging.getLogger(__name__)

StepCallback = Callable[[Month, str], None]

#: Statuses of a month's result; these exit 0, `unverified` exits 1.
OK_STATUSES = ("verified", "nothing_to_do", "dry_run")
#: How often a month is read again when the database moved between its extract and its write.
READS = 3


@dataclass(frozen=True)
class MonthResult:
    """What one reconciliation of a month found and did. `to_dict()` is the `--json` contract."""

    month: Month
    status: str  # verified | unverified | nothing_to_do | dry_run
    run_id: int | None
    rows: dict[str, int]
    timings: dict[str, float]
    verdict: verify.Verdict | None = None
    files: dict[str, str] = field(default_factory=dict)
    formula: str = "v1"
    fix: tuple[str, ...] = ()
    causes: dict[str, int] = field(default_factory=dict)  # drift and duplicate rows per cause
    repairs: dict[str, dict[str, int]] = field(default_factory=dict)  # done (dry run: to do)
    summaries: dict[str, Any] | None = None  # the summaries refresh, when there was one

    @property
    def exit_code(self) -> int:
        return 0 if self.status in OK_STATUSES else 1

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "month": str(self.month),
            "status": self.status,
            "run_id": self.run_id,
            "rows": self.rows,
            "timings": {step: round(seconds, 4) for step, seconds in self.timings.items()},
            "seconds": round(self.seconds, 4),
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "files": self.files,
            "formula": self.formula,
            "fix": list(self.fix),
            "causes": self.causes,
            "repairs": self.repairs,
            "summaries": self.summaries,
        }


def reconcile_month(
    session: Session,
    month: Month,
    *,
    dry_run: bool = False,
    version: str = "v1",
    command: str = "month",
    on_step: StepCallback | None = None,
    fix: Iterable[str] = (),
    plan: plans.RepairPlan | None = None,
    stop: threading.Event | None = None,
    backfill_id: int | None = None,
    jobs: int = 1,
) -> MonthResult:
    """Reconcile `month`: insert its missing calculation rows in one transaction, then verify.

    `fix` (`drift`, `duplicates`, `orphans` or `all`) repairs those classes in the same
    transaction too; `version` is the formula (`v1` or `halving`). With a `plan` (from
    `engine plan`) its fix and formula are used, and the month changes only if that does
    exactly what the plan says and the source still has the plan's fingerprint.
    Raises `EngineError` subclasses (missing difficulty, bad source rows, a lost connection,
    `PlanOutdated`, `RepairConflict`); the month's progress row then shows `failed` with the
    message. With `dry_run` nothing is written to the database; the Parquet files are still
    written.

    `stop` is checked where stopping is safe (before the extract, before the write): once it
    is set, `Interrupted` is raised there, and a month already in its write transaction is
    finished and verified first. A `KeyboardInterrupt` anywhere rolls back an uncommitted write;
    either way the run and the month are recorded as `interrupted` (a committed write stays
    undoable). `backfill_id` links the run to the backfill that made it, from its start.
    `jobs`: how many months share the memory budget (`Settings.memory_budget_mb`) with this
    one; a month that would not fit its share is computed in slices of days.
    """
    job = _Job.make(dry_run, version, command, fix, plan, stop, backfill_id, jobs)
    if plan is not None and plan.month != month:
        raise InputError(f"the plan is for {plan.month}, not {month}")
    if dry_run:
        return _reconcile(session, month, job, on_step)
    with month_lock(session, month):
        return _reconcile(session, month, job, on_step)


@dataclass(frozen=True)
class _Job:
    """What was asked of one month."""

    dry_run: bool
    version: str
    command: str
    fix: frozenset[str]
    plan: plans.RepairPlan | None
    stop: threading.Event | None = None
    backfill_id: int | None = None
    jobs: int = 1

    @property
    def stopped(self) -> bool:
        """Whether a signal asked the work to stop."""
        return self.stop is not None and self.stop.is_set()

    def check_stop(self, what: str) -> None:
        if self.stopped:
            raise Interrupted(f"interrupted before {what}")

    @classmethod
    def make(cls, dry_run: bool, version: str, command: str, fix: Iterable[str],
             plan: plans.RepairPlan | None, stop: threading.Event | None = None,
             backfill_id: int | None = None, jobs: int = 1) -> _Job:
        if plan is not None:
            version, fix = plan.formula, plan.fix
        if version not in formula.FORMULAS:
            raise InputError(f"formula {quoted(version)} is not one of {', '.join(formula.FORMULAS)}")
        fixes = fix if isinstance(fix, frozenset) else actions.parse_fix(fix)
        return cls(dry_run, version, command, fixes, plan, stop, backfill_id, jobs)


def examine(session: Session, month: Month, version: str, *,
            snapshot: extract.Snapshot | None = None, steps: _Steps | None = None,
            days: tuple[Days, ...] = ()) -> Examined:
    """`engine.month.examine.examine` with the session's connection, models and layout: the
    month extracted (unless its `snapshot` is given), recomputed and diffed, whole or in the
    slices `days`. Writes nothing to the database."""
    return examine_month(session.url, session.read_url, session.layout, month, version,
                         session.models, steps or _Steps(month, None),
                         engine_schema=session.engine_schema, snapshot=snapshot, days=days)


def plan_slices(session: Session, month: Month, jobs: int) -> tuple[Days, ...]:
    """The month's slices under the memory budget shared by `jobs` months: one (the whole
    month) unless it does not fit."""
    with session.transaction() as cursor:
        sizes = extract.day_sizes(cursor, month)
    capacity = slices.capacity(session.settings.memory_budget_mb, jobs, resources.base_mb())
    return tuple(slices.plan(month, sizes, len(session.models), capacity))


def _reconcile(session: Session, month: Month, job: _Job, on_step: StepCallback | None) -> MonthResult:
    steps = _Steps(month, on_step)
    layout = session.layout
    with db.translated_errors(session.url):
        if job.plan is not None:  # refuse a stale plan before anything is recorded
            with session.transaction() as cursor:
                plans.check_fingerprint(cursor, job.plan, engine_schema=session.engine_schema)
        job.check_stop("the extract")
        # A plan was made from the whole month: it is applied whole.
        days = () if job.plan is not None else plan_slices(session, month, job.jobs)
        snapshot: extract.Snapshot | None = None
        files: dict[str, str] = {}
        asked: dict[str, Any] = {"formula": job.version, "fix": tuple(sorted(job.fix))}
        if len(days) <= 1:  # read the month first: an empty one is nothing to do
            with steps("extract"):
                try:
                    snapshot = extract.extract_month(session.read_url, month, layout,
                                                     engine_schema=session.engine_schema)
                except SourceDataError as error:  # a data error is the month's state: record it
                    if not job.dry_run:
                        _record_failure(session, month, _start_run(session, month, job), error,
                                        steps.timings)
                    raise
            files = {name: str(path) for name, path in snapshot.files.items()}
            if snapshot.curtailment.is_empty() and snapshot.calculations.is_empty():
                return MonthResult(month, "nothing_to_do", None, row_counts(None), steps.timings,
                                   files=files, **asked)

        run_id = None if job.dry_run else _start_run(session, month, job)
        try:
            for read in range(1, READS + 1):
                examined = examine(session, month, job.version, snapshot=snapshot, steps=steps,
                                   days=days)
                snapshot, before = examined.snapshot, examined.diff
                files |= {name: str(path) for name, path in snapshot.files.items()} | examined.files
                with steps("diff"):
                    changes = actions.plan_actions(before, job.fix)
                asked["causes"] = causes.count(before)
                if job.plan is not None:
                    _check_plan(job.plan, before, changes, job)
                if run_id is None:
                    return MonthResult(month, "dry_run", None, row_counts(before), steps.timings,
                                       files=files, repairs=actions.counts(changes), **asked)

                job.check_stop("the write")  # from here on the month is finished, then verified
                try:
                    with steps("load"):
                        written = write_month(session, examined, run_id, changes,
                                              version=job.version, fix=job.fix, plan=job.plan,
                                              reads=read)
                    break
                except SnapshotMoved as error:
                    if read == READS:
                        raise
                    log.warning("%s; reading it again (read %d of %d)", error, read + 1, READS)
                job.check_stop("the extract")
                snapshot = None  # read again
            assert run_id is not None  # a dry run returned above
            left = actions.remaining(before, job.fix)
            # PostgreSQL's part runs on a helper thread (the session's one connection, one
            # statement at a time): ADBC cancels a statement of the main thread on Ctrl-C, and
            # the first Ctrl-C lets a committed month finish its verification.
            with steps("verify"), ThreadPoolExecutor(1) as pool:
                now = pool.submit(_calculations_now, session, month).result()
                check = pool.submit(_check_summaries, session, month, written)  # while DuckDB runs
                moved = fingerprints.differences(written.predicted, now)
                after = None
                if moved:  # the table is not as predicted: read it back to name the rows
                    after = extract.extract_after(session.read_url, month, layout)
                    files["after"] = str(after)
                snapshot = examined.snapshot
                verdict = verify.verify_month(
                    expected=parts(layout.expected(month)), after=after,
                    moved=fingerprints.describe(moved),
                    curtailment=parts(snapshot.files["curtailment_records"]), before=left,
                    snapshot=parts(snapshot.files[CALCULATIONS]), changed=written.repaired.applied,
                    inserted=examined.missing.frames(),
                    memory_mb=slices.duckdb_memory_mb(session.settings.memory_budget_mb, job.jobs,
                                                       resources.base_mb()),
                )
                verdict = verdict.plus(*check.result())
            rows = row_counts(before, written, verdict)
            status = "verified" if verdict.verified else "unverified"
            counts = left.counts() | {"inserted": written.loaded.inserted, "present": verdict.present}
            with steps("record"), session.transaction() as cursor:
                progress.record_counts(cursor, month, counts, engine_schema=session.engine_schema)
                if verdict.verified:  # what `engine status --check` compares with later
                    source = {k: v for k, v in snapshot.prints.items() if k[0] == "source"}
                    fingerprints.store(cursor, month, run_id, source | now,
                                       engine_schema=session.engine_schema)
                progress.finish(cursor, month, run_id, run_status=status,
                                month_status="completed" if verdict.verified else "failed",
                                rows=rows, timings=steps.timings, verdict=verdict.to_dict(),
                                error=None if verdict.verified else _verification_error(verdict),
                                engine_schema=session.engine_schema)
            if written.undo is not None:
                files["undo"] = str(written.undo)
            return MonthResult(month, status, run_id, rows, steps.timings, verdict, files,
                               repairs=written.repaired.to_dict() if written.repaired.changed else {},
                               summaries=written.refreshed.to_dict() if written.refreshed else None,
                               **asked)
        except BaseException as error:
            if run_id is not None:
                _record_failure(session, month, run_id, error, steps.timings,
                                interrupted=job.stopped or db.cancelled_by_user(error))
            raise


def _start_run(session: Session, month: Month, job: _Job) -> int:
    """Close the runs a killed process left open (we hold the month's lock), start ours."""
    with session.transaction() as cursor:
        for run, pid in progress.close_abandoned_runs(
                cursor, month, "abandoned: its process stopped before the run finished",
                engine_schema=session.engine_schema):
            log.warning("%s: run %s (pid %s) was left open by a stopped process; closed it",
                        month, run, pid)
        return progress.start_run(cursor, month, job.command, job.version, {
            "models": [m.name for m in session.models], "fix": sorted(job.fix),
            **({"plan": job.plan.fingerprint} if job.plan else {})}, backfill_id=job.backfill_id,
            engine_schema=session.engine_schema)


def _calculations_now(session: Session, month: Month) -> fingerprints.Prints:
    """The month's calculations as the table holds them now, per day."""
    with db.translated_errors(session.url), session.transaction() as cursor:
        return fingerprints.query(cursor, month, month, ("calculations",),
                                  engine_schema=session.engine_schema)


def _check_summaries(session: Session, month: Month, written: Written) -> tuple[verify.Check, ...]:
    if written.refreshed is None:
        return ()
    with db.translated_errors(session.url), session.transaction() as cursor:
        check = summaries.verify(cursor, month, written.summary_days)
    return (verify.Check("summaries", check.verified, check.detail()),)


def _check_plan(plan: plans.RepairPlan, before: diff.Diff, changes: pl.DataFrame,
                job: _Job) -> None:
    now = plans.build(plan.month, job.fix, job.version, plan.fingerprint, before.missing, changes)
    if problem := plan.difference(now.rows):
        raise PlanOutdated(f"the calculations of {plan.month} changed since the plan was made: "
                           f"{problem}; make a new plan")


class _Steps:
    """Times each step and tells the caller which one is starting."""

    def __init__(self, month: Month, on_step: StepCallback | None) -> None:
        self.month, self.on_step = month, on_step
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.on_step:
            self.on_step(self.month, name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def _verification_error(verdict: verify.Verdict) -> str:
    return "verification failed: " + "; ".join(f"{c.name}: {c.detail}" for c in verdict.failed)


def _record_failure(session: Session, month: Month, run_id: int, error: BaseException,
                    timings: dict[str, float], *, interrupted: bool = False) -> None:
    """Close the run and the month as `failed`, or `interrupted` when a signal stopped them (a
    write that committed keeps its row counts, so the run stays undoable)."""
    error = db.as_engine_error(error, session.url)
    interrupted = interrupted or isinstance(error, (Interrupted, KeyboardInterrupt))
    if isinstance(error, EngineError):
        message = str(error)
    elif isinstance(error, KeyboardInterrupt):
        message = "interrupted"
    else:
        message = f"{type(error).__name__}: {error}"
    status = "interrupted" if interrupted else "failed"
    try:
        with session.transaction() as cursor:
            progress.finish(cursor, month, run_id, run_status=status, month_status=status,
                            timings=timings, error=message, engine_schema=session.engine_schema)
    except BaseException:  # the original error matters more than this one
        log.warning("could not record the end of run %s of %s", run_id, month, exc_info=True)
