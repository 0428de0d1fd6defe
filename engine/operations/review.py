"""Diff, plan, apply and undo: what `engine diff`, `plan`, `apply` and `undo` do, composed of
the same steps as `reconcile.reconcile_month`. No SQL and no maths here either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from engine.errors import UndoRefused
from engine.formula import KEY
from engine.month import progress, summaries
from engine.month.diff import KINDS, Diff
from engine.month.reconcile import MonthResult, StepCallback, examine, reconcile_month
from engine.month.session import Session, month_lock
from engine.months import Month
from engine.repairs import actions, causes, plans, undo
from engine.store import db, schema

#: The columns each class shows in samples.
SAMPLE_COLUMNS = {
    "missing": [*KEY, "bitcoin_mined", "difficulty"],
    "drift": ["id", *KEY, "bitcoin_mined", "expected_bitcoin", "difficulty", "expected_difficulty",
              "cause"],
    "orphans": ["id", *KEY, "bitcoin_mined", "difficulty"],
    "duplicates": ["id", *KEY, "bitcoin_mined", "expected_bitcoin", "keep", "cause"],
}


@dataclass(frozen=True)
class MonthDiff:
    """One month's differences: counts per class and cause, a few rows of each class, and
    whether its summaries agree with their sums. `to_dict()` is the `engine diff --json`
    contract, per month."""

    month: Month
    formula: str
    counts: dict[str, int]
    causes: dict[str, int]
    samples: dict[str, list[dict[str, Any]]]
    summaries: summaries.SummaryCheck | None
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def differs(self) -> bool:
        return any(self.counts[kind] for kind in KINDS) or not (
            self.summaries is None or self.summaries.verified)

    def to_dict(self) -> dict[str, Any]:
        return {"month": str(self.month), "formula": self.formula, "differs": self.differs,
                "counts": self.counts, "causes": self.causes,
                "summaries": self.summaries.to_dict() if self.summaries else None,
                "samples": self.samples, "files": self.files, "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class DiffReport:
    """`engine diff` over one or more months; exit 1 when anything differs, 0 when exact."""

    months: tuple[MonthDiff, ...]

    @property
    def exit_code(self) -> int:
        return 1 if any(m.differs for m in self.months) else 0

    def totals(self) -> dict[str, int]:
        keys = ("expected", "present", *KINDS)
        return {k: sum(m.counts[k] for m in self.months) for k in keys}

    def causes(self) -> dict[str, int]:
        return {c: sum(m.causes.get(c, 0) for m in self.months) for c in causes.CAUSES}

    def summaries_differ(self) -> int:
        """Months whose summaries do not agree with their sums."""
        return sum(1 for m in self.months if m.summaries is not None and not m.summaries.verified)

    def to_dict(self) -> dict[str, Any]:
        return {"differs": self.exit_code == 1, "totals": self.totals(), "causes": self.causes(),
                "months_with_summary_differences": self.summaries_differ(),
                "months": [m.to_dict() for m in self.months]}


def diff_months(session: Session, months: Iterable[Month], *, version: str = "v1",
                samples: int = 3, on_month: Callable[[MonthDiff], None] | None = None) -> DiffReport:
    """Diff each month (read-only; the Parquet under data/diffs/ is written)."""
    found = []
    for month in months:
        result = diff_month(session, month, version=version, samples=samples)
        found.append(result)
        if on_month:
            on_month(result)
    return DiffReport(tuple(found))


def diff_month(session: Session, month: Month, *, version: str = "v1", samples: int = 3) -> MonthDiff:
    """Extract, recompute and diff `month`, write each class to data/diffs/<class>/month=…/,
    find the causes of drift and duplicates and check the summaries. Writes nothing to the
    database. Raises `MissingDifficulty`, `SourceDataError`, `InputError` (unknown formula)."""
    start = time.perf_counter()
    examined = examine(session, month, version)
    found = examined.diff
    files = {kind: examined.files[f"diff_{kind}"] for kind in KINDS}
    with db.translated_errors(session.url), session.transaction() as cursor:
        check = summaries.verify(cursor, month)
    return MonthDiff(month, version, found.counts(), causes.count(found), _samples(found, samples),
                     check, files, time.perf_counter() - start)


def make_plan(session: Session, month: Month, *, fix: Iterable[str], version: str = "v1"
              ) -> plans.RepairPlan:
    """What reconciling `month` with `fix` would change, with the source's fingerprint (taken
    before the extract, so a change during the extract makes the plan refuse, never pass).
    Writes nothing to the database."""
    fixes = actions.parse_fix(fix)
    with db.translated_errors(session.url), session.transaction() as cursor:
        fingerprint = plans.fingerprint(cursor, month, engine_schema=session.engine_schema)
    found = examine(session, month, version).diff
    return plans.build(month, fixes, version, fingerprint, found.missing,
                          actions.plan_actions(found, fixes), tuple(m.name for m in session.models))


def apply_plan(session: Session, path: Path, *, on_step: StepCallback | None = None) -> MonthResult:
    """Apply a plan file: refuse (`PlanOutdated`) when the source or the rows it changes moved."""
    plan = plans.read(path)
    return reconcile_month(session, plan.month, plan=plan, command="apply", on_step=on_step)


@dataclass(frozen=True)
class UndoResult:
    """What `engine undo` put back. `to_dict()` is the `--json` contract."""

    run_id: int
    undo_run_id: int
    month: Month
    restored: undo.Restored
    summaries: summaries.SummaryCheck

    @property
    def exit_code(self) -> int:
        return 0 if self.summaries.verified else 1

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "undo_run_id": self.undo_run_id, "month": str(self.month),
                **self.restored.to_dict(), "summaries": self.summaries.to_dict()}


def undo_run(session: Session, run_id: int) -> UndoResult:
    """Put back what run `run_id` changed (see `engine.repairs.undo`), in one transaction under the
    month's lock, refresh the summaries it touched and record the undo as a run of its own.

    Raises `UndoRefused` (nothing changed) or `MonthBusy`."""
    _check_run(session, run_id)
    record, before, inserted = undo.read_record(session.undo_dir, run_id)
    with db.translated_errors(session.url), month_lock(session, record.month):
        with session.transaction() as cursor:
            _lock_run(cursor, record, session.engine_schema)
            state = progress.month_states(cursor, record.month, record.month,
                                          engine_schema=session.engine_schema).get(record.month)
            undo_id = progress.start_run(cursor, record.month, "undo", record.formula,
                                         {"undo_of": run_id}, engine_schema=session.engine_schema)
            restored = undo.restore(cursor, record, before, inserted)
            refreshed = summaries.refresh(cursor, record.month, record.summary_days)
            undo.link(cursor, run_id, undo_id, engine_schema=session.engine_schema)
            # The month is as before the run: its rows are missing again if it inserted any.
            status = "not_started" if restored.removed or state is None else state.status
            progress.finish(cursor, record.month, undo_id, run_status="verified",
                            month_status=status if status != "in_progress" else "not_started",
                            rows=restored.to_dict(), engine_schema=session.engine_schema)
            cursor.execute(schema.sql(actions.RECORD, session.engine_schema),
                           (undo_id, None, None, _json(refreshed.to_dict())))
        with session.transaction() as cursor:
            check = summaries.verify(cursor, record.month, record.summary_days)
    return UndoResult(run_id, undo_id, record.month, restored, check)


def check_undo(session: Session, run_id: int) -> None:
    """Raise `UndoRefused` unless `undo_run(session, run_id)` could be done now. Changes
    nothing."""
    _check_run(session, run_id)
    record, before, inserted = undo.read_record(session.undo_dir, run_id)
    with db.translated_errors(session.url), session.transaction() as cursor:
        _lock_run(cursor, record, session.engine_schema)
        undo.check(cursor, record, before, inserted)


def _check_run(session: Session, run_id: int) -> None:
    """Raise `UndoRefused` saying why, when the database has no run `run_id` or it cannot be
    undone (an undo itself, already undone, never committed): before its files are read, so
    the message is about the run, not about a missing folder."""
    with db.translated_errors(session.url), session.transaction() as cursor:
        undo.lock_run(cursor, run_id, engine_schema=session.engine_schema)


def _lock_run(cursor: db.Cursor, record: undo.UndoRecord, engine_schema: str) -> None:
    run = undo.lock_run(cursor, record.run_id, engine_schema=engine_schema)
    if run.month != str(record.month):
        raise UndoRefused(f"the undo record of run {record.run_id} is for {record.month}, "
                          f"the run for {run.month}")


# The runs of a backfill that wrote something and are not undone yet, newest first.
BACKFILL_RUNS = """
SELECT id FROM {engine}.reconciliation_runs
WHERE backfill_id = $1 AND undone_by IS NULL AND status = ANY($2)
  AND coalesce((rows->>'inserted')::bigint, 0) + coalesce((rows->>'updated')::bigint, 0)
    + coalesce((rows->>'deleted')::bigint, 0) > 0
ORDER BY id DESC
"""


def undo_backfill(session: Session, backfill_id: int,
                  on_run: Callable[[UndoResult], None] | None = None) -> list[UndoResult]:
    """Undo every run of backfill `backfill_id` that changed something, newest first, each as
    `undo_run` does (in its own transaction). Every run is checked first: raises `UndoRefused`,
    having undone nothing, when there is none or one of them cannot be undone. (A run another
    process changes between the check and its undo still refuses; the runs undone before it
    stay undone, and the message says which.)"""
    with db.translated_errors(session.url), session.transaction() as cursor:
        runs = [int(r[0]) for r in db.fetch_all(cursor, schema.sql(BACKFILL_RUNS, session.engine_schema),
                                                (backfill_id, list(undo.UNDOABLE)))]
    if not runs:
        raise UndoRefused(f"backfill {backfill_id} has no run left to undo (unknown, already "
                          "undone, or it changed nothing)")
    for run_id in runs:
        try:
            check_undo(session, run_id)
        except UndoRefused as error:
            raise UndoRefused(f"{error} (backfill {backfill_id}: nothing was undone)") from None
    done: list[UndoResult] = []
    for run_id in runs:
        try:
            done.append(undo_run(session, run_id))
        except UndoRefused as error:
            undone = ", ".join(str(r.run_id) for r in done) or "none"
            raise UndoRefused(f"{error} (backfill {backfill_id}: runs undone before it: {undone})"
                              ) from None
        if on_run:
            on_run(done[-1])
    return done


def _samples(found: Diff, n: int) -> dict[str, list[dict[str, Any]]]:
    """Up to `n` rows of each class; drift and duplicates take one of each cause first."""
    out = {}
    for kind, frame in found.frames().items():
        if "cause" in frame.columns and frame.height:
            frame = frame.with_columns(_rank=pl.int_range(pl.len()).over("cause")).sort(
                "_rank", "cause", *KEY)
        columns = [c for c in SAMPLE_COLUMNS[kind] if c in frame.columns]
        out[kind] = [{k: _plain(v) for k, v in row.items()}
                     for row in frame.head(n).select(columns).iter_rows(named=True)]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _json(value: Any) -> str:
    return json.dumps(value)
