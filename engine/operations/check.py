"""`engine status --check`: what changed since the months were verified, in one pass.

Each verified month stored its per-day fingerprints (`engine.month.fingerprints`): rows and
Σ row hash of its source and of its calculations. One statement computes them again for the
whole range (one scan of each table) and compares: a day whose source differs has new, deleted,
edited or moved curtailment records (a record moved to another period, farm or day changes its
hash); a day whose calculations differ had a row edited, deleted or added after the month was
verified. A completed month of the second kind becomes `regressed`: `engine run` (every month
not completed, or `--only regressed`) and `engine scheduled` reconcile it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from engine.errors import InputError
from engine.month import fingerprints, progress
from engine.months import Month
from engine.operations.alerts import Alert, Alerter
from engine.store import db
from engine.store.config import Settings
from engine.store.schema import DEFAULT_SCHEMA


@dataclass(frozen=True)
class MonthChange:
    """A verified month whose source or calculations changed since."""

    month: Month
    status: str  # its progress status after the check (`regressed` when its rows changed)
    source_days: tuple[date, ...]
    calculation_days: tuple[date, ...]
    detail: str

    @property
    def regressed(self) -> bool:
        return bool(self.calculation_days)

    def to_dict(self) -> dict[str, Any]:
        return {"month": str(self.month), "status": self.status,
                "source_changed_days": [d.isoformat() for d in self.source_days],
                "calculations_changed_days": [d.isoformat() for d in self.calculation_days],
                "detail": self.detail}


@dataclass(frozen=True)
class CheckResult:
    first: Month
    last: Month
    checked: tuple[Month, ...]  # months that have stored fingerprints
    changes: tuple[MonthChange, ...]
    seconds: float
    unchecked: tuple[Month, ...] = field(default=())  # completed, verified before fingerprints

    @property
    def exit_code(self) -> int:
        """0 when nothing changed, 1 when a month's source or calculations did."""
        return 1 if self.changes else 0

    def to_dict(self) -> dict[str, Any]:
        return {"from": str(self.first), "to": str(self.last),
                "checked": [str(m) for m in self.checked],
                "unchecked": [str(m) for m in self.unchecked],
                "changes": [c.to_dict() for c in self.changes],
                "seconds": round(self.seconds, 3), "exit_code": self.exit_code}


def check(cursor: db.Cursor, first: Month, last: Month, *,
          engine_schema: str = DEFAULT_SCHEMA) -> CheckResult:
    """Compare the stored fingerprints from `first` to `last` with the database; mark completed
    months whose calculations changed `regressed` (in the caller's transaction)."""
    start = time.perf_counter()
    stored, months = fingerprints.stored(cursor, first, last, engine_schema=engine_schema)
    now = fingerprints.query(cursor, first, last, ("source", "calculations"),
                             engine_schema=engine_schema)
    states = progress.month_states(cursor, first, last, engine_schema=engine_schema)
    now = {key: day for key, day in now.items() if fingerprints.month_of(key[1]) in months}
    by_month: dict[Month, list[tuple[str, date, fingerprints.Day, fingerprints.Day]]] = {}
    for difference in fingerprints.differences(stored, now):
        by_month.setdefault(fingerprints.month_of(difference[1]), []).append(difference)
    changes = []
    for month, found in sorted(by_month.items()):
        detail = fingerprints.describe(found)
        calculation_days = tuple(day for kind, day, _, _ in found if kind == "calculations")
        state = states.get(month)
        status = state.status if state else "not_started"
        if calculation_days and status == "completed":
            progress.mark_regressed(cursor, month, "calculations changed since verified: "
                                    + detail, engine_schema=engine_schema)
            status = "regressed"
        changes.append(MonthChange(
            month, status, tuple(day for kind, day, _, _ in found if kind == "source"),
            calculation_days, detail))
    unchecked = tuple(sorted(m for m, s in states.items()
                             if s.status == "completed" and m not in months))
    return CheckResult(first, last, tuple(sorted(months)), tuple(changes),
                       time.perf_counter() - start, unchecked)


def alert(alerter: Alerter, result: CheckResult) -> None:
    """One alert for the months that regressed (a changed source alone is the scheduled job's
    ordinary work, not an alert)."""
    regressed = [c for c in result.changes if c.regressed]
    if not regressed:
        return
    alerter.send(Alert(
        "regressed", f"{len(regressed)} verified month(s) changed since verification",
        "\n".join(f"{c.month}: {c.detail}" for c in regressed),
        {"months": ", ".join(str(c.month) for c in regressed)}))


def run_check(settings: Settings, url: str, first: Month | None, last: Month | None, *,
              alerter: Alerter | None = None) -> CheckResult:
    """`engine status --check`: check the months from `first` to `last` (default: every month)
    in one transaction, and alert on the regressed ones."""
    from engine.month.session import open_session

    first, last = first or ALL[0], last or ALL[1]
    if first > last:
        raise InputError(f"--from {first} is after --to {last}")
    with open_session(settings, url) as session, session.transaction() as cursor:
        result = check(cursor, first, last, engine_schema=settings.schema)
    if alerter is not None:
        alert(alerter, result)
    return result


#: Every month the engine can hold.
ALL = (Month(2000, 1), Month(2100, 12))
