"""The month's one write transaction: load, repairs, summaries, undo image, counts and run
row commit together or not at all. Never commits anything else.

Its last statement, after every lock it waited for, asks PostgreSQL for the month's
fingerprint (`engine.month.fingerprints`): if the source, the difficulty or the calculations it
did not write moved since the extract, it rolls back and raises `SnapshotMoved`, and the month
is computed again from a fresh extract. It returns the fingerprint it predicts for the
calculations once committed, which verification checks."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from engine.month import diff, extract, fingerprints, load, progress, summaries, verify
from engine.month.examine import Examined
from engine.month.session import Session
from engine.repairs import actions, causes, plans, undo
from engine.store import db, schema


class SnapshotMoved(db.TransientDatabaseError):
    """The month's source, difficulty or calculations changed between the extract and the
    write; nothing was written."""


@dataclass(frozen=True)
class Written:
    """What the month's write transaction did."""

    loaded: load.LoadResult
    repaired: actions.RepairResult
    refreshed: summaries.SummaryRefresh | None
    summary_days: tuple[date, ...] | None  # None: the whole month
    undo: Path | None
    predicted: fingerprints.Prints  # the month's calculations, per day, as the run leaves them


def write_month(session: Session, examined: Examined, run_id: int, changes: pl.DataFrame, *,
                version: str, fix: frozenset[str], plan: plans.RepairPlan | None,
                reads: int = 1) -> Written:
    """The one transaction that writes: the missing rows (streamed into the stage a slice at a
    time), the repairs (`changes`), the summaries, the undo record (before the commit), the
    month's counts and the run row, left `loaded`, with the state the month was computed from.
    Raises `SnapshotMoved` when the database no longer holds the snapshot the diff was taken
    from (another writer changed the source or inserted one of the keys); nothing is then
    written. `reads`: how many times the month was read before this snapshot, recorded with it."""
    snapshot, before, missing = examined.snapshot, examined.diff, examined.missing
    month = snapshot.month
    folder = undo.directory(session.undo_dir, run_id)
    try:
        with session.transaction() as cursor:
            if plan is not None:
                plans.check_fingerprint(cursor, plan, engine_schema=session.engine_schema)
            if not session.unique_key:  # no index to reject a key: hold writers off instead
                load.hold_off_writers(cursor)
            try:
                loaded = load.load_missing(cursor, missing.chunks(), unique_key=session.unique_key)
            except load.KeyConflict as error:
                raise SnapshotMoved(f"another writer inserted some of the keys of {month} since "
                                    "it was read") from error
            added = fingerprints.staged(cursor, load.STAGED) if loaded.staged else {}
            repaired = actions.apply_actions(cursor, changes)
            updated = fingerprints.staged(cursor, actions.UPDATED) if repaired.changed else {}
            changed = bool(loaded.inserted or repaired.changed)
            refreshed, days, record_folder = None, None, None
            if changed or fix:  # a repair makes the whole month's summaries right
                days = None if fix else missing.days
                refreshed = summaries.refresh(cursor, month, days)
            if changed:
                record = undo.UndoRecord(
                    run_id, month, version, undo.applied_at(cursor), loaded.inserted,
                    sum(repaired.updated.values()), sum(repaired.deleted.values()),
                    tuple(sorted(fix)), days)
                record_folder = undo.write_record(
                    session.undo_dir, record, before=repaired.before,
                    inserted=missing.files if loaded.inserted else ())
            removed = snapshot.calculation_hashes.filter(
                pl.col("id").is_in(repaired.applied["id"].implode()))
            untouched = fingerprints.plus(fingerprints.of_kinds(snapshot.prints, "calculations"),
                                          minus=[fingerprints.of_frame("calculations", removed)])
            predicted = fingerprints.plus(untouched, added, updated)
            written = Written(loaded, repaired, refreshed, days, record_folder, predicted)
            left = actions.remaining(before, fix)
            progress.record_counts(cursor, month, left.counts() | {"inserted": loaded.inserted},
                                   engine_schema=session.engine_schema)
            progress.finish(cursor, month, run_id, run_status="loaded", month_status="in_progress",
                            rows=row_counts(before, written), engine_schema=session.engine_schema)
            progress.record_snapshot(cursor, run_id, snapshot.prints, reads=reads,
                                     engine_schema=session.engine_schema)
            cursor.execute(schema.sql(actions.RECORD, session.engine_schema), (
                run_id, json.dumps(causes.count(before)), json.dumps(repaired.to_dict()),
                json.dumps(refreshed.to_dict() if refreshed else None)))
            _check_unmoved(cursor, session, snapshot, untouched)
        return written
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # nothing was committed: nothing to undo
        raise


def _check_unmoved(cursor: db.Cursor, session: Session, snapshot: extract.Snapshot,
                   untouched: fingerprints.Prints) -> None:
    """Raise `SnapshotMoved` (the transaction then rolls back) unless the month's source and
    difficulty are the snapshot's and the calculations the transaction did not write are the
    snapshot's less the rows it repaired. Run last, so a writer that committed while the
    transaction waited for a lock is seen."""
    now = fingerprints.before_commit(cursor, snapshot.month, engine_schema=session.engine_schema)
    want = fingerprints.of_kinds(snapshot.prints, "source", "difficulty") | untouched
    if moved := fingerprints.differences(want, fingerprints.of_kinds(
            now, "source", "difficulty", "calculations")):
        raise SnapshotMoved(f"{snapshot.month} changed since it was read "
                            f"({fingerprints.describe(moved)})")


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
