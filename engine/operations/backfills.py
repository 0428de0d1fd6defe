"""The backfill record: one row per `engine run` or `engine scheduled` in
`reconciliation_backfills` (each run names its backfill from its start, see
`progress.start_run`). Each function runs in the caller's transaction."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

from engine.store import db
from engine.store.schema import DEFAULT_SCHEMA, sql

START_BACKFILL = """
INSERT INTO {engine}.reconciliation_backfills (command, status, arguments, plan, jobs, pid, host)
VALUES ($1, 'running', $2::jsonb, $3::jsonb, $4, $5, $6) RETURNING id
"""


UPDATE_BACKFILL = """
UPDATE {engine}.reconciliation_backfills SET
    status = $2, months_verified = $3, months_failed = $4, months_skipped = $5,
    rows_inserted = $6, retries = $7, throttle = $8::jsonb, error = $9, updated_at = now(),
    finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE clock_timestamp() END
WHERE id = $1
"""


# Backfills still `running` whose process is gone (killed, or its machine down): a live one
# holds its advisory lock ($1 = locks.BACKFILL_LOCK_CLASS). Their runs are closed when their
# months are taken over; the row keeps the counts of its last heartbeat.
CLOSE_ABANDONED = """
UPDATE {engine}.reconciliation_backfills b SET status = 'interrupted',
    error = 'abandoned: its process stopped', finished_at = clock_timestamp(), updated_at = now()
WHERE b.status = 'running' AND NOT EXISTS (
    SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
      AND l.classid = $1::int8::oid AND l.objid = (b.id % 2147483648)::int8::oid AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
RETURNING b.id
"""

# What a backfill's runs committed, read back when its process must stop at once (its
# workers' own tallies are then incomplete): verified months, others, rows inserted.
COUNTS_OF_RUNS = """
SELECT count(*) FILTER (WHERE status IN ('verified', 'nothing_to_do')),
       count(*) FILTER (WHERE status NOT IN ('verified', 'nothing_to_do')),
       coalesce(sum((rows->>'inserted')::bigint)
                FILTER (WHERE status IN ('verified', 'unverified', 'loaded', 'interrupted')), 0)
FROM {engine}.reconciliation_runs WHERE backfill_id = $1
"""

# The runs of this process's backfill that had not committed when it stopped at once, and
# their months: interrupted. (A run whose write commits meanwhile is no longer `running`.)
INTERRUPT_RUNS = """
WITH stopped AS (
    UPDATE {engine}.reconciliation_runs SET status = 'interrupted', error = $2,
        finished_at = clock_timestamp()
    WHERE backfill_id = $1 AND status = 'running' RETURNING id, month)
UPDATE {engine}.reconciliation_progress p SET status = 'interrupted', last_error = $2,
    updated_at = now(), finished_at = now()
FROM stopped s WHERE p.month = s.month AND p.last_run_id = s.id AND p.status = 'in_progress'
"""


def close_abandoned(cursor: db.Cursor, lock_class: int, *,
                    engine_schema: str = DEFAULT_SCHEMA) -> list[int]:
    """Close the backfills left `running` by a process that is gone; return their ids."""
    return [int(r[0]) for r in db.fetch_all(cursor, sql(CLOSE_ABANDONED, engine_schema),
                                            (lock_class,))]


def counts_of_runs(cursor: db.Cursor, backfill_id: int, *,
                   engine_schema: str = DEFAULT_SCHEMA) -> tuple[int, int, int]:
    """(months verified, months not verified, rows committed) by the backfill's runs."""
    verified, others, inserted = db.fetch_all(cursor, sql(COUNTS_OF_RUNS, engine_schema),
                                              (backfill_id,))[0]
    return int(verified), int(others), int(inserted)


def interrupt_runs(cursor: db.Cursor, backfill_id: int, reason: str, *,
                   engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Mark the backfill's runs that had not committed, and their months, `interrupted`."""
    cursor.execute(sql(INTERRUPT_RUNS, engine_schema), (backfill_id, reason))


def start_backfill(cursor: db.Cursor, command: str, arguments: Mapping[str, Any],
                   plan: list[dict[str, Any]], jobs: int, *,
                   engine_schema: str = DEFAULT_SCHEMA) -> int:
    """Insert a `running` backfill row; return its id."""
    cursor.execute(sql(START_BACKFILL, engine_schema),
                   (command, json.dumps(arguments), json.dumps(plan), jobs,
                    os.getpid(), socket.gethostname()))
    row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def update_backfill(cursor: db.Cursor, backfill_id: int, *, status: str, counts: Mapping[str, int],
                    throttle: Mapping[str, Any], error: str | None = None,
                    engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Store the backfill's counts so far (`verified`, `failed`, `skipped`, `inserted`,
    `retries`) and its throttle record; any status but `running` closes it."""
    cursor.execute(sql(UPDATE_BACKFILL, engine_schema), (
        backfill_id, status, counts["verified"], counts["failed"], counts["skipped"],
        counts["inserted"], counts["retries"], json.dumps(throttle, default=str), error))

