"""One month end to end: extract → recompute → diff → load → verify → record.

The only module that calls several steps. It holds no SQL and no maths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from engine import db, diff, extract, formula, load, progress, schema, verify
from engine.config import MinerModel, Settings, load_miner_models
from engine.errors import EngineError, MonthBusy
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
) -> MonthResult:
    """Reconcile `month`: insert its missing calculation rows in one transaction, then verify.

    Raises `EngineError` subclasses (missing difficulty, bad source rows, a lost connection);
    the month's progress row then shows `failed` with the message. With `dry_run` nothing is
    written to the database; the Parquet files are still written.
    """
    if dry_run:
        return _reconcile(session, month, dry_run, version, command, on_step)
    with _month_lock(session, month):
        return _reconcile(session, month, dry_run, version, command, on_step)


@contextmanager
def _month_lock(session: Session, month: Month) -> Iterator[None]:
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


def _reconcile(session: Session, month: Month, dry_run: bool, version: str, command: str,
               on_step: StepCallback | None) -> MonthResult:
    steps = _Steps(month, on_step)
    layout = session.layout
    with db.translated_errors(session.url):
        with steps("extract"):
            snapshot = extract.extract_month(session.url, month, layout)
        files = {name: str(path) for name, path in snapshot.files.items()}
        if snapshot.curtailment.is_empty() and snapshot.calculations.is_empty():
            return MonthResult(month, "nothing_to_do", None, _rows(None), steps.timings, files=files)

        run_id = None
        if not dry_run:
            with session.transaction() as cursor:
                run_id = progress.start_run(cursor, month, command, version,
                                            {"models": [m.name for m in session.models]})
        try:
            with steps("recompute"):
                expected = formula.expected_rows(snapshot.curtailment, snapshot.difficulty,
                                                 session.models, version)
                tolerance = formula.one_miner_btc(snapshot.difficulty, session.models)
                files["expected"] = str(write_parquet(expected, layout.expected(month)))
            with steps("diff"):
                before = diff.compare(expected, snapshot.calculations, tolerance)
                for kind, frame in before.frames().items():
                    files[f"diff_{kind}"] = str(write_parquet(frame, layout.diff(kind, month)))
            if run_id is None:
                return MonthResult(month, "dry_run", None, _rows(before), steps.timings, files=files)

            with steps("load"):
                try:
                    loaded = _load(session, month, run_id, before, skip_conflicts=False)
                except load.KeyConflict:
                    log.info("%s: another writer inserted some of the keys; merging around them",
                             month)
                    loaded = _load(session, month, run_id, before, skip_conflicts=True)
            counts = before.counts() | {"inserted": loaded.inserted}
            with steps("verify"):
                after = extract.extract_after(session.url, month, layout)
                files["after"] = str(after)
                verdict = verify.verify_month(
                    expected=layout.expected(month), after=after,
                    curtailment=snapshot.files["curtailment_records"], before=before,
                    tolerance=tolerance,
                )
            rows = _rows(before, loaded, verdict)
            status = "verified" if verdict.verified else "unverified"
            with steps("record"), session.transaction() as cursor:
                progress.record_counts(cursor, month, counts | {"present": verdict.present})
                progress.finish(cursor, month, run_id, run_status=status,
                                month_status="completed" if verdict.verified else "failed",
                                rows=rows, timings=steps.timings, verdict=verdict.to_dict(),
                                error=None if verdict.verified else _verification_error(verdict))
            return MonthResult(month, status, run_id, rows, steps.timings, verdict, files)
        except BaseException as error:
            if run_id is not None:
                _record_failure(session, month, run_id, error, steps.timings)
            raise


def _load(session: Session, month: Month, run_id: int, before: diff.Diff, *,
          skip_conflicts: bool) -> load.LoadResult:
    """The one transaction that writes: the missing rows, the month's counts, the run row."""
    with session.transaction() as cursor:
        loaded = load.load_missing(cursor, before.missing, unique_key=session.unique_key,
                                   skip_conflicts=skip_conflicts)
        progress.record_counts(cursor, month, before.counts() | {"inserted": loaded.inserted})
        progress.finish(cursor, month, run_id, run_status="loaded", month_status="in_progress",
                        rows=_rows(before, loaded))
    return loaded


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


def _rows(before: diff.Diff | None, loaded: load.LoadResult | None = None,
          verdict: verify.Verdict | None = None) -> dict[str, int]:
    counts = before.counts() if before else dict.fromkeys(
        ("expected", "present", "missing", "drift", "orphans", "duplicates"), 0)
    return {
        "expected": counts["expected"],
        "present_before": counts["present"],
        "missing_before": counts["missing"],
        "inserted": loaded.inserted if loaded else 0,
        "already_present": loaded.already_present if loaded else 0,
        "drift": counts["drift"],
        "orphans": counts["orphans"],
        "duplicates": counts["duplicates"],
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
