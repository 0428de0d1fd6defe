"""Step 6, record: `reconciliation_progress` (one row per month) and `reconciliation_runs`
(one row per run). Each function runs in the caller's transaction."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.month import fingerprints, locks
from engine.months import Month
from engine.store import db
from engine.store.schema import DEFAULT_SCHEMA, sql

START_RUN = """
INSERT INTO {engine}.reconciliation_runs (month, command, formula, dry_run, status, arguments, pid,
    backfill_id, worker)
VALUES ($1, $2, $3, false, 'running', $4::jsonb, $5, $6, $7) RETURNING id
"""

MARK_IN_PROGRESS = """
INSERT INTO {engine}.reconciliation_progress (month, status, attempts, last_run_id, started_at, updated_at)
VALUES ($1, 'in_progress', 1, $2, now(), now())
ON CONFLICT (month) DO UPDATE SET
    status = 'in_progress', attempts = reconciliation_progress.attempts + 1,
    last_run_id = excluded.last_run_id, started_at = now(), finished_at = NULL, updated_at = now()
"""

RECORD_COUNTS = """
UPDATE {engine}.reconciliation_progress SET
    expected_rows = $2, present_rows = $3, inserted_rows = $4, missing_rows = $5,
    drift_rows = $6, orphan_rows = $7, duplicate_rows = $8,
    percent_complete = CASE WHEN $2 = 0 THEN 100 ELSE round(100.0 * $3 / $2, 2) END,
    updated_at = now()
WHERE month = $1
"""

FINISH_MONTH = """
UPDATE {engine}.reconciliation_progress SET
    status = $2, last_error = $3, updated_at = now(),
    last_error_kind = CASE WHEN $2 = 'completed' THEN NULL ELSE last_error_kind END,
    finished_at = CASE WHEN $2 IN ('completed', 'failed', 'interrupted') THEN now() END
WHERE month = $1
"""

FINISH_RUN = """
UPDATE {engine}.reconciliation_runs SET
    status = $2, rows = coalesce($3::jsonb, rows), timings = $4::jsonb, verdict = $5::jsonb,
    error = $6,
    finished_at = CASE WHEN $2 = 'loaded' THEN NULL ELSE clock_timestamp() END
WHERE id = $1
"""


def worker_name() -> str:
    """Who runs a month: `host:pid/thread` (a `--jobs` thread is `backfill-N`)."""
    return f"{socket.gethostname()}:{os.getpid()}/{threading.current_thread().name}"


def start_run(cursor: db.Cursor, month: Month, command: str, formula: str,
              arguments: Mapping[str, Any], *, backfill_id: int | None = None,
              engine_schema: str = DEFAULT_SCHEMA) -> int:
    """Insert a `running` run row (of backfill `backfill_id`, if any) naming the worker that
    runs it (`worker_name()`), mark the month `in_progress`; return the run id."""
    cursor.execute(sql(START_RUN, engine_schema),
                   (str(month), command, formula, json.dumps(arguments), os.getpid(), backfill_id,
                    worker_name()))
    row = cursor.fetchone()
    assert row is not None
    run_id = int(row[0])
    cursor.execute(sql(MARK_IN_PROGRESS, engine_schema), (str(month), run_id))
    return run_id


def record_counts(cursor: db.Cursor, month: Month, counts: Mapping[str, int], *,
                  engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Store the month's row counts (`expected`, `present`, `inserted`, `missing`, …)."""
    cursor.execute(sql(RECORD_COUNTS, engine_schema), (
        str(month), counts["expected"], counts["present"], counts.get("inserted", 0),
        counts["missing"], counts["drift"], counts["orphans"], counts["duplicates"],
    ))


def finish(cursor: db.Cursor, month: Month, run_id: int, *, run_status: str,
           month_status: str, rows: Mapping[str, int] | None = None,
           timings: Mapping[str, float] | None = None, verdict: Mapping[str, Any] | None = None,
           error: str | None = None, engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Close the run (`loaded`, `verified`, `unverified`, `failed`, `nothing_to_do`) and
    set the month's status (`in_progress`, `completed`, `failed`)."""
    cursor.execute(sql(FINISH_MONTH, engine_schema), (str(month), month_status, error))
    cursor.execute(sql(FINISH_RUN, engine_schema),
                   (run_id, run_status, _json(rows), _json(timings), _json(verdict), error))


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, default=str)


# --- month states, source fingerprints, attempts, backfill records ----------------------------

#: What `engine run --only` selects by; `running` (locked by a live process) is never selectable.
SELECTIONS = ("missing", "failed", "interrupted", "stale", "regressed", "completed")


MONTH_STATES = """
SELECT month, status, attempts, retries, last_error, last_error_kind, last_run_id, started_at,
       finished_at
FROM {engine}.reconciliation_progress WHERE month >= $1 AND month <= $2
"""


# `attempts` counts tries: the pipeline adds one when it starts a run; a try that failed before
# that (a lost connection during the extract) is counted here, never twice.
RECORD_ATTEMPT = """
INSERT INTO {engine}.reconciliation_progress AS p (month, status, attempts, retries, last_error,
    last_error_kind, last_error_at, updated_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, now(), now(), CASE WHEN $2 = 'failed' THEN now() END)
ON CONFLICT (month) DO UPDATE SET
    status = excluded.status, attempts = greatest(p.attempts, excluded.attempts),
    retries = p.retries + excluded.retries, last_error = excluded.last_error,
    last_error_kind = excluded.last_error_kind, last_error_at = now(), updated_at = now(),
    finished_at = CASE WHEN excluded.status = 'failed' THEN now() ELSE p.finished_at END
"""

MARK_ERROR_KIND = """
UPDATE {engine}.reconciliation_progress SET last_error_kind = $2, last_error_at = now() WHERE month = $1
"""

# Runs still `running` or `loaded` of a month whose lock we hold: their process is gone. One
# that committed its write (`loaded`) was interrupted, not failed: it stays undoable.
CLOSE_ABANDONED_RUNS = """
UPDATE {engine}.reconciliation_runs SET
    status = CASE WHEN status = 'loaded' THEN 'interrupted' ELSE 'failed' END, error = $2,
    finished_at = clock_timestamp()
WHERE month = $1 AND status IN ('running', 'loaded') RETURNING id, pid
"""


@dataclass(frozen=True)
class MonthState:
    """A month's progress row and whether a live process holds its lock."""

    month: Month
    status: str  # not_started | in_progress | completed | failed | interrupted | regressed
    locked: bool
    attempts: int = 0
    retries: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None
    last_run_id: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def selection(self) -> str:
        """`missing` (never reconciled), `failed`, `interrupted`, `completed`, `regressed`
        (completed, its calculations changed since), `stale` (in progress, its process gone)
        or `running` (its lock is held)."""
        if self.locked:
            return "running"
        return {"not_started": "missing", "in_progress": "stale"}.get(self.status, self.status)


def month_states(cursor: db.Cursor, first: Month, last: Month, *,
                 engine_schema: str = DEFAULT_SCHEMA) -> dict[Month, MonthState]:
    """Every month from `first` to `last` that has a progress row or a held lock."""
    held = {m for m in locks.held_months(cursor) if first <= m <= last}
    states = {}
    for row in db.fetch_all(cursor, sql(MONTH_STATES, engine_schema), (str(first), str(last))):
        month = Month.parse(row[0])
        states[month] = MonthState(month, row[1], month in held, int(row[2]), int(row[3]), row[4],
                                   row[5], row[6], row[7], row[8])
    for month in held - states.keys():
        states[month] = MonthState(month, "not_started", True)
    return states


def record_attempt(cursor: db.Cursor, month: Month, *, attempts: int, error: str, kind: str,
                   final: bool, engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Store a failed try: `attempts` is the try's number; `final` marks the month `failed`,
    otherwise it stays `in_progress` and counts one more retry."""
    cursor.execute(sql(RECORD_ATTEMPT, engine_schema),
                   (str(month), "failed" if final else "in_progress", attempts,
                    0 if final else 1, error, kind))


def mark_error_kind(cursor: db.Cursor, month: Month, kind: str, *,
                    engine_schema: str = DEFAULT_SCHEMA) -> None:
    cursor.execute(sql(MARK_ERROR_KIND, engine_schema), (str(month), kind))


def close_abandoned_runs(cursor: db.Cursor, month: Month, reason: str, *,
                         engine_schema: str = DEFAULT_SCHEMA) -> list[tuple[int, int | None]]:
    """Mark the month's unfinished runs failed; call it only while holding the month's lock.
    Returns their (run id, pid)."""
    return [(int(r[0]), r[1]) for r in db.fetch_all(cursor, sql(CLOSE_ABANDONED_RUNS, engine_schema),
                                                    (str(month), reason))]




RECORD_SNAPSHOT = "UPDATE {engine}.reconciliation_runs SET snapshot = $2::jsonb WHERE id = $1"


def record_snapshot(cursor: db.Cursor, run_id: int, prints: fingerprints.Prints, *, reads: int,
                    engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Store on the run which state of the database the month was computed from: per table,
    its rows, days and the sum of its rows' hashes (`engine.month.fingerprints`), and after how
    many reads (more than one: the database moved under an earlier one)."""
    state: dict[str, dict[str, Any]] = {kind: {"rows": 0, "days": 0, "hash": 0}
                                        for kind in fingerprints.KINDS}
    for (kind, _), day in prints.items():
        state[kind]["rows"] += day.rows
        state[kind]["days"] += 1
        state[kind]["hash"] += day.hash
    for entry in state.values():
        entry["hash"] = str(entry["hash"])
    cursor.execute(sql(RECORD_SNAPSHOT, engine_schema), (run_id, json.dumps({**state, "reads": reads})))


MARK_REGRESSED = """
UPDATE {engine}.reconciliation_progress SET status = 'regressed', last_error = $2,
    last_error_kind = 'regressed', last_error_at = now(), updated_at = now()
WHERE month = $1 AND status = 'completed'
"""


def mark_regressed(cursor: db.Cursor, month: Month, why: str, *,
                   engine_schema: str = DEFAULT_SCHEMA) -> bool:
    """A completed month whose calculations changed since they were verified; False when the
    month was not `completed` (nothing changed)."""
    return db.execute(cursor, sql(MARK_REGRESSED, engine_schema), (str(month), why)) > 0
