"""Step 6, record: `reconciliation_progress` (one row per month) and `reconciliation_runs`
(one row per run). Each function runs in the caller's transaction."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from engine import db
from engine.months import Month

START_RUN = """
INSERT INTO reconciliation_runs (month, command, formula, dry_run, status, arguments, pid)
VALUES ($1, $2, $3, false, 'running', $4::jsonb, $5) RETURNING id
"""

MARK_IN_PROGRESS = """
INSERT INTO reconciliation_progress (month, status, attempts, last_run_id, started_at, updated_at)
VALUES ($1, 'in_progress', 1, $2, now(), now())
ON CONFLICT (month) DO UPDATE SET
    status = 'in_progress', attempts = reconciliation_progress.attempts + 1,
    last_run_id = excluded.last_run_id, started_at = now(), finished_at = NULL, updated_at = now()
"""

RECORD_COUNTS = """
UPDATE reconciliation_progress SET
    expected_rows = $2, present_rows = $3, inserted_rows = $4, missing_rows = $5,
    drift_rows = $6, orphan_rows = $7, duplicate_rows = $8,
    percent_complete = CASE WHEN $2 = 0 THEN 100 ELSE round(100.0 * $3 / $2, 2) END,
    updated_at = now()
WHERE month = $1
"""

FINISH_MONTH = """
UPDATE reconciliation_progress SET
    status = $2, last_error = $3, updated_at = now(),
    finished_at = CASE WHEN $2 IN ('completed', 'failed') THEN now() END
WHERE month = $1
"""

FINISH_RUN = """
UPDATE reconciliation_runs SET
    status = $2, rows = $3::jsonb, timings = $4::jsonb, verdict = $5::jsonb, error = $6,
    finished_at = CASE WHEN $2 = 'loaded' THEN NULL ELSE clock_timestamp() END
WHERE id = $1
"""


# Advisory locks: one per month, keyed (engine, year * 100 + month). Session-level, so a
# process that dies releases its months at once; a row left `in_progress` whose lock is free
# is stale and the next runner takes it over.
LOCK_CLASS = 0x656E67  # "eng"
TRY_LOCK = "SELECT pg_try_advisory_lock($1::int4, $2::int4)"
UNLOCK = "SELECT pg_advisory_unlock($1::int4, $2::int4)"
LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND classid = $1::int8::oid AND objid = $2::int8::oid AND objsubid = 2
  AND granted LIMIT 1
"""


def try_lock_month(cursor: db.Cursor, month: Month) -> bool:
    """Take the month's advisory lock if it is free; return whether we hold it now."""
    cursor.execute(TRY_LOCK, _lock_key(month))
    row = cursor.fetchone()
    return bool(row and row[0])


def unlock_month(cursor: db.Cursor, month: Month) -> None:
    cursor.execute(UNLOCK, _lock_key(month))
    cursor.fetchall()


def lock_holder(cursor: db.Cursor, month: Month) -> int | None:
    """The backend pid that holds the month's lock, if any."""
    rows = db.fetch_all(cursor, LOCK_HOLDER, _lock_key(month))
    return int(rows[0][0]) if rows else None


def _lock_key(month: Month) -> tuple[int, int]:
    return LOCK_CLASS, month.year * 100 + month.month


def start_run(cursor: db.Cursor, month: Month, command: str, formula: str,
              arguments: Mapping[str, Any]) -> int:
    """Insert a `running` run row, mark the month `in_progress`; return the run id."""
    cursor.execute(START_RUN, (str(month), command, formula, json.dumps(arguments), os.getpid()))
    row = cursor.fetchone()
    assert row is not None
    run_id = int(row[0])
    cursor.execute(MARK_IN_PROGRESS, (str(month), run_id))
    return run_id


def record_counts(cursor: db.Cursor, month: Month, counts: Mapping[str, int]) -> None:
    """Store the month's row counts (`expected`, `present`, `inserted`, `missing`, …)."""
    cursor.execute(RECORD_COUNTS, (
        str(month), counts["expected"], counts["present"], counts.get("inserted", 0),
        counts["missing"], counts["drift"], counts["orphans"], counts["duplicates"],
    ))


def finish(cursor: db.Cursor, month: Month, run_id: int, *, run_status: str,
           month_status: str, rows: Mapping[str, int] | None = None,
           timings: Mapping[str, float] | None = None, verdict: Mapping[str, Any] | None = None,
           error: str | None = None) -> None:
    """Close the run (`loaded`, `verified`, `unverified`, `failed`, `nothing_to_do`) and
    set the month's status (`in_progress`, `completed`, `failed`)."""
    cursor.execute(FINISH_MONTH, (str(month), month_status, error))
    cursor.execute(FINISH_RUN, (run_id, run_status, _json(rows), _json(timings), _json(verdict), error))


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, default=str)
