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

