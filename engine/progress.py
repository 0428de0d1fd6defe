"""Step 6, record: `reconciliation_progress` (one row per month) and `reconciliation_runs`
(one row per run). Each function runs in the caller's transaction."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
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


# --- month states, source fingerprints, attempts, backfill records ----------------------------

#: What `engine run --only` selects by; `running` (locked by a live process) is never selectable.
SELECTIONS = ("missing", "failed", "stale", "completed")

# Locks live per database; pg_locks shows every database's, so filter on ours.
HELD_MONTH_LOCKS = """
SELECT objid::int8 FROM pg_locks
WHERE locktype = 'advisory' AND classid = $1::int8::oid AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

MONTH_STATES = """
SELECT month, status, attempts, retries, last_error, last_error_kind, last_run_id, started_at,
       finished_at, source_records, source_max_id, source_max_created_at, source_volume::text
FROM reconciliation_progress WHERE month >= $1 AND month <= $2
"""

SOURCE_FINGERPRINTS = """
SELECT to_char(settlement_date, 'YYYY-MM'), count(*), max(id), max(created_at), sum(volume)::text
FROM curtailment_records WHERE settlement_date >= $1 AND settlement_date < $2
GROUP BY 1 ORDER BY 1
"""

STORE_FINGERPRINT = """
UPDATE reconciliation_progress SET source_records = $2, source_max_id = $3,
    source_max_created_at = $4, source_volume = $5::numeric, last_error_kind = NULL
WHERE month = $1
"""

# `attempts` counts tries: the pipeline adds one when it starts a run; a try that failed before
# that (a lost connection during the extract) is counted here, never twice.
RECORD_ATTEMPT = """
INSERT INTO reconciliation_progress AS p (month, status, attempts, retries, last_error,
    last_error_kind, last_error_at, updated_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, now(), now(), CASE WHEN $2 = 'failed' THEN now() END)
ON CONFLICT (month) DO UPDATE SET
    status = excluded.status, attempts = greatest(p.attempts, excluded.attempts),
    retries = p.retries + excluded.retries, last_error = excluded.last_error,
    last_error_kind = excluded.last_error_kind, last_error_at = now(), updated_at = now(),
    finished_at = CASE WHEN excluded.status = 'failed' THEN now() ELSE p.finished_at END
"""

MARK_ERROR_KIND = """
UPDATE reconciliation_progress SET last_error_kind = $2, last_error_at = now() WHERE month = $1
"""

# Runs still `running` or `loaded` of a month whose lock we hold: their process is gone.
CLOSE_ABANDONED_RUNS = """
UPDATE reconciliation_runs SET status = 'failed', error = $2, finished_at = clock_timestamp()
WHERE month = $1 AND status IN ('running', 'loaded') RETURNING id, pid
"""

LINK_RUNS = """
UPDATE reconciliation_runs SET backfill_id = $1
WHERE month = $2 AND id > $3 AND pid = $4 AND backfill_id IS NULL
"""

START_BACKFILL = """
INSERT INTO reconciliation_backfills (command, status, arguments, plan, jobs, pid, host)
VALUES ($1, 'running', $2::jsonb, $3::jsonb, $4, $5, $6) RETURNING id
"""

UPDATE_BACKFILL = """
UPDATE reconciliation_backfills SET
    status = $2, months_verified = $3, months_failed = $4, months_skipped = $5,
    rows_inserted = $6, retries = $7, throttle = $8::jsonb, error = $9, updated_at = now(),
    finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE clock_timestamp() END
WHERE id = $1
"""

# Keys of the other advisory locks, in LOCK_CLASS: months use year * 100 + month (≥ 200001).
SCHEDULER_LOCK = 1
BACKFILL_LOCK_CLASS = LOCK_CLASS + 1  # one per running backfill, so others can tell it is alive


@dataclass(frozen=True)
class Fingerprint:
    """What a month's source held: records, highest id, newest created_at and Σ volume.

    New records raise the count and the id, re-ingested days raise the id and created_at,
    deleted ones lower the count, edited volumes move the sum."""

    records: int
    max_id: int
    max_created_at: datetime | None
    volume: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "max_id": self.max_id,
                "max_created_at": self.max_created_at.isoformat() if self.max_created_at else None,
                "volume": str(self.volume)}

    def describe_change(self, before: Fingerprint) -> str:
        """What differs from `before`, in words (for the log and the scheduled job's output)."""
        parts = []
        if self.records != before.records:
            parts.append(f"records {before.records:,} → {self.records:,}")
        if self.max_id != before.max_id:
            parts.append(f"max id {before.max_id} → {self.max_id}")
        if self.max_created_at != before.max_created_at:
            parts.append("newer created_at")
        if self.volume != before.volume:
            parts.append("Σ volume changed")
        return ", ".join(parts) or "unchanged"


@dataclass(frozen=True)
class MonthState:
    """A month's progress row and whether a live process holds its lock."""

    month: Month
    status: str  # not_started | in_progress | completed | failed
    locked: bool
    attempts: int = 0
    retries: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None
    last_run_id: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    fingerprint: Fingerprint | None = None

    @property
    def selection(self) -> str:
        """`missing` (never reconciled), `failed`, `completed`, `stale` (in progress, its process
        gone) or `running` (its lock is held)."""
        if self.locked:
            return "running"
        return {"not_started": "missing", "in_progress": "stale"}.get(self.status, self.status)


def month_states(cursor: db.Cursor, first: Month, last: Month) -> dict[Month, MonthState]:
    """Every month from `first` to `last` that has a progress row or a held lock."""
    keys = [_month_of_key(row[0]) for row in db.fetch_all(cursor, HELD_MONTH_LOCKS, (LOCK_CLASS,))]
    held = {m for m in keys if m is not None and first <= m <= last}
    states = {}
    for row in db.fetch_all(cursor, MONTH_STATES, (str(first), str(last))):
        month = Month.parse(row[0])
        fingerprint = None
        if row[9] is not None:
            fingerprint = Fingerprint(int(row[9]), int(row[10]), row[11], Decimal(row[12]))
        states[month] = MonthState(month, row[1], month in held, int(row[2]), int(row[3]), row[4],
                                   row[5], row[6], row[7], row[8], fingerprint)
    for month in held - states.keys():
        states[month] = MonthState(month, "not_started", True)
    return states


def source_fingerprints(cursor: db.Cursor, first: Month, last: Month) -> dict[Month, Fingerprint]:
    """The fingerprint of every month from `first` to `last` that has curtailment records."""
    rows = db.fetch_all(cursor, SOURCE_FINGERPRINTS, (first.first_day, last.next_first_day))
    return {Month.parse(r[0]): Fingerprint(int(r[1]), int(r[2]), r[3], Decimal(r[4])) for r in rows}


def store_fingerprint(cursor: db.Cursor, month: Month, fingerprint: Fingerprint) -> None:
    """Remember what the source held when the month was verified."""
    cursor.execute(STORE_FINGERPRINT, (str(month), fingerprint.records, fingerprint.max_id,
                                       fingerprint.max_created_at, str(fingerprint.volume)))


def record_attempt(cursor: db.Cursor, month: Month, *, attempts: int, error: str, kind: str,
                   final: bool) -> None:
    """Store a failed try: `attempts` is the try's number; `final` marks the month `failed`,
    otherwise it stays `in_progress` and counts one more retry."""
    cursor.execute(RECORD_ATTEMPT, (str(month), "failed" if final else "in_progress", attempts,
                                    0 if final else 1, error, kind))


def mark_error_kind(cursor: db.Cursor, month: Month, kind: str) -> None:
    cursor.execute(MARK_ERROR_KIND, (str(month), kind))


def close_abandoned_runs(cursor: db.Cursor, month: Month, reason: str) -> list[tuple[int, int | None]]:
    """Mark the month's unfinished runs failed; call it only while holding the month's lock.
    Returns their (run id, pid)."""
    return [(int(r[0]), r[1]) for r in db.fetch_all(cursor, CLOSE_ABANDONED_RUNS, (str(month), reason))]


def link_runs(cursor: db.Cursor, backfill_id: int, month: Month, after_run_id: int | None) -> None:
    """Attach this process's newer runs of `month` to the backfill that made them."""
    cursor.execute(LINK_RUNS, (backfill_id, str(month), after_run_id or 0, os.getpid()))


def start_backfill(cursor: db.Cursor, command: str, arguments: Mapping[str, Any],
                   plan: list[dict[str, Any]], jobs: int) -> int:
    """Insert a `running` backfill row; return its id."""
    cursor.execute(START_BACKFILL, (command, json.dumps(arguments), json.dumps(plan), jobs,
                                    os.getpid(), socket.gethostname()))
    row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def update_backfill(cursor: db.Cursor, backfill_id: int, *, status: str, counts: Mapping[str, int],
                    throttle: Mapping[str, Any], error: str | None = None) -> None:
    """Store the backfill's counts so far (`verified`, `failed`, `skipped`, `inserted`,
    `retries`) and its throttle record; any status but `running` closes it."""
    cursor.execute(UPDATE_BACKFILL, (
        backfill_id, status, counts["verified"], counts["failed"], counts["skipped"],
        counts["inserted"], counts["retries"], json.dumps(throttle, default=str), error))


def try_lock(cursor: db.Cursor, key: tuple[int, int]) -> bool:
    cursor.execute(TRY_LOCK, key)
    row = cursor.fetchone()
    return bool(row and row[0])


def unlock(cursor: db.Cursor, key: tuple[int, int]) -> None:
    cursor.execute(UNLOCK, key)
    cursor.fetchall()


def month_lock_key(month: Month) -> tuple[int, int]:
    return _lock_key(month)


def _month_of_key(key: int) -> Month | None:
    year, month = divmod(int(key), 100)
    return Month(year, month) if 2000 <= year <= 2100 and 1 <= month <= 12 else None
