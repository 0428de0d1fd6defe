"""One month end to end: extract → recompute → diff → load (and repair) → verify → record.

The only module that calls several steps (with `operations`, its sibling for diff, plan,
apply and undo). It holds no SQL and no maths.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from engine import (
    causes,
    db,
    diff,
    extract,
    formula,
    load,
    planfile,
    progress,
    repair,
    schema,
    summaries,
    undo,
    verify,
)
from engine.config import MinerModel, Settings, load_miner_models
from engine.errors import EngineError, InputError, MonthBusy, PlanOutdated, SourceDataError
from engine.months import Month
from engine.paths import Layout, write_parquet

log = logging.getLogger(__name__)

StepCallback = Callable[[Month, str], None]

#: Statuses of a month's result; these exit 0, `unverified` exits 1.
OK_STATUSES = ("verified", "nothing_to_do", "dry_run")


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


@dataclass
class Session:
    """What every month of a run shares: one connection, the models, the data layout."""

    settings: Settings
    url: str
    conn: db.Connection
    models: tuple[MinerModel, ...]
    unique_key: bool

    @property
    def layout(self) -> Layout:
        return Layout(self.settings.data_dir)

    @property
    def read_url(self) -> str:
        """The URL connectorx reads with: the engine's lock and statement timeouts apply."""
        return db.with_timeouts(self.url, lock_timeout_ms=self.settings.lock_timeout_ms,
                                statement_timeout_ms=self.settings.statement_timeout_ms)

    @contextmanager
    def transaction(self) -> Iterator[db.Cursor]:
        with db.transaction(self.conn, lock_timeout_ms=self.settings.lock_timeout_ms,
                            statement_timeout_ms=self.settings.statement_timeout_ms) as cursor:
            yield cursor


@contextmanager
def open_session(settings: Settings, url: str | None = None) -> Iterator[Session]:
    """Connect (starting the embedded server if no URL is configured) and check the schema.

    Raises `DatabaseUnavailable`, `SchemaError` or `InputError` (a bad miner models file).
    """
    models = load_miner_models(settings.miner_models_file)
    url = url or db.resolve_url(settings.database_url, settings.data_dir)
    with db.connect(url) as conn, db.translated_errors(url):
        with db.transaction(conn, lock_timeout_ms=settings.lock_timeout_ms,
                            statement_timeout_ms=settings.statement_timeout_ms) as cursor:
            schema.check_schema(cursor)
            unique_key = schema.has_unique_key(cursor)
        yield Session(settings, url, conn, models, unique_key)


def reconcile_month(
    session: Session,
    month: Month,
    *,
    dry_run: bool = False,
    version: str = "v1",
    command: str = "month",
    on_step: StepCallback | None = None,
    fix: Iterable[str] = (),
    plan: planfile.RepairPlan | None = None,
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
    """
    job = _Job.make(dry_run, version, command, fix, plan)
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
    plan: planfile.RepairPlan | None

    @classmethod
    def make(cls, dry_run: bool, version: str, command: str, fix: Iterable[str],
             plan: planfile.RepairPlan | None) -> _Job:
        if plan is not None:
            version, fix = plan.formula, plan.fix
        if version not in formula.FORMULAS:
            raise InputError(f"formula {version!r} is not one of {', '.join(formula.FORMULAS)}")
        fixes = fix if isinstance(fix, frozenset) else repair.parse_fix(fix)
        return cls(dry_run, version, command, fixes, plan)


@contextmanager
def month_lock(session: Session, month: Month) -> Iterator[None]:
    """Hold the month's advisory lock for the run; raise `MonthBusy` if another process has it."""
    with db.translated_errors(session.url), session.transaction() as cursor:
        if not progress.try_lock_month(cursor, month):
            raise MonthBusy(month, progress.lock_holder(cursor, month))
    try:
        yield
    finally:
        try:
            with db.translated_errors(session.url), session.transaction() as cursor:
                progress.unlock_month(cursor, month)
        except EngineError:  # the connection is gone, and the lock with it
            log.debug("could not release the lock of %s", month, exc_info=True)


def _reconcile(session: Session, month: Month, job: _Job, on_step: StepCallback | None) -> MonthResult:
    steps = _Steps(month, on_step)
    layout = session.layout
    with db.translated_errors(session.url):
        if job.plan is not None:  # refuse a stale plan before anything is recorded
            with session.transaction() as cursor:
                planfile.check_fingerprint(cursor, job.plan)
        with steps("extract"):
            try:
                snapshot = extract.extract_month(session.read_url, month, layout)
            except SourceDataError as error:  # a data error is the month's state: record it
                if not job.dry_run:
                    _record_failure(session, month, _start_run(session, month, job), error,
                                    steps.timings)
                raise
        files = {name: str(path) for name, path in snapshot.files.items()}
        asked: dict[str, Any] = {"formula": job.version, "fix": tuple(sorted(job.fix))}
        if snapshot.curtailment.is_empty() and snapshot.calculations.is_empty():
            return MonthResult(month, "nothing_to_do", None, _rows(None), steps.timings,
                               files=files, **asked)

        run_id = None if job.dry_run else _start_run(session, month, job)
        try:
            with steps("recompute"):
                expected = formula.expected_rows(snapshot.curtailment, snapshot.difficulty,
                                                 session.models, job.version)
                tolerance = formula.one_miner_btc(snapshot.difficulty, session.models, job.version)
                files["expected"] = str(write_parquet(expected, layout.expected(month)))
            with steps("diff"):
                before = find_differences(snapshot, expected, tolerance, session.models, job.version)
                for kind, frame in before.frames().items():
                    files[f"diff_{kind}"] = str(write_parquet(frame, layout.diff(kind, month)))
                actions = repair.plan_actions(before, job.fix)
            asked["causes"] = causes.count(before)
            if job.plan is not None:
                _check_plan(job.plan, before, actions, job)
            if run_id is None:
                return MonthResult(month, "dry_run", None, _rows(before), steps.timings, files=files,
                                   repairs=repair.counts(actions), **asked)

            with steps("load"):
                try:
                    written = _write(session, month, run_id, before, actions, job, files,
                                     skip_conflicts=False)
                except load.KeyConflict:
                    log.info("%s: another writer inserted some of the keys; merging around them",
                             month)
                    written = _write(session, month, run_id, before, actions, job, files,
                                     skip_conflicts=True)
            left = repair.remaining(before, job.fix)
            with steps("verify"), ThreadPoolExecutor(1) as pool:
                # The summaries are checked in PostgreSQL while DuckDB checks the rows.
                check = pool.submit(_check_summaries, session, month, written)
                after = extract.extract_after(session.read_url, month, layout)
                files["after"] = str(after)
                verdict = verify.verify_month(
                    expected=layout.expected(month), after=after,
                    curtailment=snapshot.files["curtailment_records"], before=left,
                    tolerance=tolerance,
                )
                verdict = verdict.plus(*check.result())
            rows = _rows(before, written, verdict)
            status = "verified" if verdict.verified else "unverified"
            counts = left.counts() | {"inserted": written.loaded.inserted, "present": verdict.present}
            with steps("record"), session.transaction() as cursor:
                progress.record_counts(cursor, month, counts)
                progress.finish(cursor, month, run_id, run_status=status,
                                month_status="completed" if verdict.verified else "failed",
                                rows=rows, timings=steps.timings, verdict=verdict.to_dict(),
                                error=None if verdict.verified else _verification_error(verdict))
            if written.undo is not None:
                files["undo"] = str(written.undo)
            return MonthResult(month, status, run_id, rows, steps.timings, verdict, files,
                               repairs=written.repaired.to_dict() if written.repaired.changed else {},
                               summaries=written.refreshed.to_dict() if written.refreshed else None,
                               **asked)
        except BaseException as error:
            if run_id is not None:
                _record_failure(session, month, run_id, error, steps.timings)
            raise


def _start_run(session: Session, month: Month, job: _Job) -> int:
    """Close the runs a killed process left open (we hold the month's lock), start ours."""
    with session.transaction() as cursor:
        for run, pid in progress.close_abandoned_runs(
                cursor, month, "abandoned: its process stopped before the run finished"):
            log.warning("%s: run %s (pid %s) was left open by a stopped process; closed it",
                        month, run, pid)
        return progress.start_run(cursor, month, job.command, job.version, {
            "models": [m.name for m in session.models], "fix": sorted(job.fix),
            **({"plan": job.plan.fingerprint} if job.plan else {})})


def find_differences(snapshot: extract.Snapshot, expected: pl.DataFrame, tolerance: pl.DataFrame,
                     models: tuple[MinerModel, ...], version: str) -> diff.Diff:
    """The snapshot's diff against the expected rows, its drift and duplicates with causes."""
    found = diff.compare(expected, snapshot.calculations, tolerance, snapshot.curtailment)
    return causes.explain(found, snapshot.curtailment, models, version)


def _check_summaries(session: Session, month: Month, written: _Written) -> tuple[verify.Check, ...]:
    if written.refreshed is None:
        return ()
    with db.translated_errors(session.url), session.transaction() as cursor:
        check = summaries.verify(cursor, month, written.summary_days)
    return (verify.Check("summaries", check.verified, check.detail()),)


def _check_plan(plan: planfile.RepairPlan, before: diff.Diff, actions: pl.DataFrame,
                job: _Job) -> None:
    now = planfile.build(plan.month, job.fix, job.version, plan.fingerprint, before.missing, actions)
    if problem := plan.difference(now.rows):
        raise PlanOutdated(f"the calculations of {plan.month} changed since the plan was made: "
                           f"{problem}; make a new plan")


@dataclass(frozen=True)
class _Written:
    loaded: load.LoadResult
    repaired: repair.RepairResult
    refreshed: summaries.SummaryRefresh | None
    summary_days: tuple[date, ...] | None  # None: the whole month
    undo: Path | None


def _write(session: Session, month: Month, run_id: int, before: diff.Diff, actions: pl.DataFrame,
           job: _Job, files: dict[str, str], *, skip_conflicts: bool) -> _Written:
    """The one transaction that writes: the missing rows, the repairs, the summaries, the undo
    record (before the commit), the month's counts and the run row."""
    folder = undo.directory(session.settings.data_dir, run_id)
    try:
        with session.transaction() as cursor:
            if job.plan is not None:
                planfile.check_fingerprint(cursor, job.plan)
            loaded = load.load_missing(cursor, before.missing, unique_key=session.unique_key,
                                       skip_conflicts=skip_conflicts)
            repaired = repair.apply_actions(cursor, actions)
            changed = bool(loaded.inserted or repaired.changed)
            refreshed, days, record_folder = None, None, None
            if changed or job.fix:  # a repair makes the whole month's summaries right
                days = None if job.fix else tuple(before.missing["settlement_date"].unique().sort())
                refreshed = summaries.refresh(cursor, month, days)
            if changed:
                record = undo.UndoRecord(
                    run_id, month, job.version, undo.applied_at(cursor), loaded.inserted,
                    sum(repaired.updated.values()), sum(repaired.deleted.values()),
                    tuple(sorted(job.fix)), days)
                record_folder = undo.write_record(
                    session.settings.data_dir, record, before=repaired.before,
                    inserted=Path(files["diff_missing"]) if loaded.inserted else None)
            written = _Written(loaded, repaired, refreshed, days, record_folder)
            left = repair.remaining(before, job.fix)
            progress.record_counts(cursor, month, left.counts() | {"inserted": loaded.inserted})
            progress.finish(cursor, month, run_id, run_status="loaded", month_status="in_progress",
                            rows=_rows(before, written))
            cursor.execute(repair.RECORD, (
                run_id, json.dumps(causes.count(before)), json.dumps(repaired.to_dict()),
                json.dumps(refreshed.to_dict() if refreshed else None)))
        return written
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # nothing was committed: nothing to undo
        raise


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


def _rows(before: diff.Diff | None, written: _Written | None = None,
          verdict: verify.Verdict | None = None) -> dict[str, int]:
    counts = before.counts() if before else dict.fromkeys(
        ("expected", "present", "missing", "drift", "orphans", "duplicates"), 0)
    loaded = written.loaded if written else None
    repaired = written.repaired if written else repair.NO_REPAIR
    return {
        "expected": counts["expected"],
        "present_before": counts["present"],
        "missing_before": counts["missing"],
        "inserted": loaded.inserted if loaded else 0,
        "already_present": loaded.already_present if loaded else 0,
        "drift": counts["drift"],
        "orphans": counts["orphans"],
        "duplicates": counts["duplicates"],
        "updated": sum(repaired.updated.values()),
        "deleted": sum(repaired.deleted.values()),
        "verified": verdict.present if verdict and verdict.verified else 0,
    }


def _verification_error(verdict: verify.Verdict) -> str:
    return "verification failed: " + "; ".join(f"{c.name}: {c.detail}" for c in verdict.failed)


def _record_failure(session: Session, month: Month, run_id: int, error: BaseException,
                    timings: dict[str, float]) -> None:
    if isinstance(error, EngineError):
        message = str(error)
    elif isinstance(error, KeyboardInterrupt):
        message = "interrupted"
    else:
        message = f"{type(error).__name__}: {error}"
    try:
        with session.transaction() as cursor:
            progress.finish(cursor, month, run_id, run_status="failed", month_status="failed",
                            timings=timings, error=message)
    except Exception:  # the original error matters more than this one
        log.warning("could not record the failure of %s", month, exc_info=True)
