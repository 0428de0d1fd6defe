"""`engine scheduled`: keep the table reconciled, unattended, from cron or a systemd timer.

Each start reconciles what changed since the months were last verified: months never
reconciled, months whose curtailment changed or whose calculations changed after they were
verified (`regressed`), both found by comparing the per-day fingerprints stored when each
month was verified (`engine.operations.check`), failed, interrupted and stale months. A
scheduler lock makes a start that overlaps a running one a no-op; month locks keep it off
months a backfill is working on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.month import fingerprints, locks, progress
from engine.months import Month
from engine.operations import check
from engine.operations.alerts import Alerter
from engine.operations.backfill import (
    BackfillRequest,
    BackfillResult,
    EventCallback,
    run_backfill,
    with_application_name,
)
from engine.operations.retries import RetryPolicy
from engine.operations.selection import Plan, PlannedMonth
from engine.operations.throttle import ThrottleConfig
from engine.store import db
from engine.store.config import Settings
from engine.store.schema import DEFAULT_SCHEMA

log = logging.getLogger(__name__)

_ALL = (Month(2000, 1), Month(2100, 12))


@dataclass(frozen=True)
class Change:
    """Why a month is due: new, changed, regressed, unfingerprinted, failed, interrupted or
    stale."""

    month: Month
    reason: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"month": str(self.month), "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class ScheduledResult:
    changes: tuple[Change, ...]
    backfill: BackfillResult | None = None
    overlapped: bool = False  # another `engine scheduled` was running: nothing done

    @property
    def exit_code(self) -> int:
        """0 nothing to do, all verified or overlapped; else the backfill's (1, 2, 75)."""
        return self.backfill.exit_code if self.backfill else 0

    def to_dict(self) -> dict[str, Any]:
        return {"overlapped": self.overlapped, "changes": [c.to_dict() for c in self.changes],
                "backfill": self.backfill.to_dict() if self.backfill else None,
                "exit_code": self.exit_code}


def find_changes(cursor: db.Cursor, *, engine_schema: str = DEFAULT_SCHEMA,
                 alerter: Alerter | None = None
                 ) -> tuple[list[Change], dict[Month, progress.MonthState], dict[Month, int]]:
    """The months that are due, newest first, with the states and record counts read. Marks
    the months whose calculations changed since they were verified `regressed`."""
    checked = check.check(cursor, *_ALL, engine_schema=engine_schema)
    if alerter is not None:
        check.alert(alerter, checked)
    changed = {c.month: c for c in checked.changes}
    records = fingerprints.records_per_month(cursor, *_ALL)
    states = progress.month_states(cursor, *_ALL, engine_schema=engine_schema)
    changes = []
    for month in sorted(records.keys() | states.keys(), reverse=True):
        state, now = states.get(month), records.get(month)
        if state is not None and state.locked:
            continue  # another process is on it
        if state is None or state.status == "not_started":
            if now:
                changes.append(Change(month, "new", f"{now:,} curtailment records, "
                                      "never reconciled"))
        elif state.status in ("failed", "interrupted"):
            changes.append(Change(month, state.status, state.last_error or state.status))
        elif state.status == "in_progress":
            changes.append(Change(month, "stale", "left in progress by a process that is gone"))
        elif state.status == "regressed":
            changes.append(Change(month, "regressed", changed[month].detail if month in changed
                                  else state.last_error or "calculations changed"))
        elif month in changed:
            changes.append(Change(month, "changed", changed[month].detail))
        elif month in checked.unchecked and now:
            changes.append(Change(month, "unfingerprinted",
                                  "verified before per-day fingerprints were kept"))
    return changes, states, records


def run_scheduled(settings: Settings, *, url: str | None = None, jobs: int = 1,
                  throttle: ThrottleConfig | None = None, retry: RetryPolicy | None = None,
                  on_event: EventCallback | None = None, alerter: Alerter | None = None,
                  on_changes: Callable[[list[Change]], None] | None = None,
                  stop: threading.Event | None = None) -> ScheduledResult:
    """Reconcile the months that are due. Raises what `run_backfill` raises before starting;
    `stop` stops it cleanly as it stops `run_backfill`."""
    url = with_application_name(url or db.resolve_url(settings.database_url, settings.data_dir,
                                                      connect_timeout_s=settings.connect_timeout_s),
                                "engine-scheduled")
    with db.connect(url) as conn, db.translated_errors(url):
        with conn.cursor() as cursor:
            got = locks.try_lock(cursor, (locks.LOCK_CLASS, locks.SCHEDULER_LOCK))
            conn.commit()
        if not got:
            log.info("another `engine scheduled` is running; nothing to do")
            return ScheduledResult((), overlapped=True)
        found: list[Change] = []

        def choose(cursor: db.Cursor) -> Plan:
            changes, states, records = find_changes(cursor, engine_schema=settings.schema,
                                                    alerter=alerter)
            found.extend(changes)
            if on_changes:
                on_changes(changes)
            months = tuple(PlannedMonth(c.month, states[c.month].selection if c.month in states
                                        else "missing",
                                        records.get(c.month, 0),
                                        states.get(c.month)) for c in changes)
            return Plan("newest", months, {})

        request = BackfillRequest(jobs=jobs, command="scheduled",
                                  throttle=throttle or ThrottleConfig(load_aware=True),
                                  retry=retry or RetryPolicy())
        result = run_backfill(settings, request, url=url, on_event=on_event, choose=choose,
                              alerter=alerter, stop=stop)
        # The scheduler lock goes with the connection.
    return ScheduledResult(tuple(found), result if found else None)
