"""The month's one write transaction: load, repairs, summaries, undo image, counts and run
row commit together or not at all. Never commits anything else."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from engine.month import diff, load, progress, summaries, verify
from engine.month.session import Session
from engine.months import Month
from engine.repairs import actions, causes, plans, undo
from engine.store import schema


@dataclass(frozen=True)
class Written:
    """What the month's write transaction did."""

    loaded: load.LoadResult
    repaired: actions.RepairResult
    refreshed: summaries.SummaryRefresh | None
    summary_days: tuple[date, ...] | None  # None: the whole month
    undo: Path | None


def write_month(session: Session, month: Month, run_id: int, before: diff.Diff,
                changes: pl.DataFrame, *, version: str, fix: frozenset[str],
                plan: plans.RepairPlan | None, files: dict[str, str],
                skip_conflicts: bool) -> Written:
    """The one transaction that writes: the missing rows, the repairs (`changes`), the
    summaries, the undo record (before the commit), the month's counts and the run row, left
    `loaded`. Raises `load.KeyConflict` when another writer inserted some of the keys and
    `skip_conflicts` is off; nothing is then written."""
    folder = undo.directory(session.undo_dir, run_id)
    try:
        with session.transaction() as cursor:
            if plan is not None:
                plans.check_fingerprint(cursor, plan, engine_schema=session.engine_schema)
            loaded = load.load_missing(cursor, before.missing, unique_key=session.unique_key,
                                       skip_conflicts=skip_conflicts)
            repaired = actions.apply_actions(cursor, changes)
            changed = bool(loaded.inserted or repaired.changed)
            refreshed, days, record_folder = None, None, None
            if changed or fix:  # a repair makes the whole month's summaries right
                days = None if fix else tuple(before.missing["settlement_date"].unique().sort())
                refreshed = summaries.refresh(cursor, month, days)
            if changed:
                record = undo.UndoRecord(
                    run_id, month, version, undo.applied_at(cursor), loaded.inserted,
                    sum(repaired.updated.values()), sum(repaired.deleted.values()),
                    tuple(sorted(fix)), days)
                record_folder = undo.write_record(
                    session.undo_dir, record, before=repaired.before,
                    inserted=Path(files["diff_missing"]) if loaded.inserted else None)
            written = Written(loaded, repaired, refreshed, days, record_folder)
            left = actions.remaining(before, fix)
            progress.record_counts(cursor, month, left.counts() | {"inserted": loaded.inserted},
                                   engine_schema=session.engine_schema)
            progress.finish(cursor, month, run_id, run_status="loaded", month_status="in_progress",
                            rows=row_counts(before, written), engine_schema=session.engine_schema)
            cursor.execute(schema.sql(actions.RECORD, session.engine_schema), (
                run_id, json.dumps(causes.count(before)), json.dumps(repaired.to_dict()),
                json.dumps(refreshed.to_dict() if refreshed else None)))
        return written
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # nothing was committed: nothing to undo
        raise


def row_counts(before: diff.Diff | None, written: Written | None = None,
               verdict: verify.Verdict | None = None) -> dict[str, int]:
    """The `rows` of a month's result and run record."""
    counts = before.counts() if before else dict.fromkeys(
        ("expected", "present", "missing", "drift", "orphans", "duplicates"), 0)
    loaded = written.loaded if written else None
    repaired = written.repaired if written else actions.NO_REPAIR
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
