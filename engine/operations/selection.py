"""Which months a backfill works on, and in what order. Ordering and selection are pure; one
function reads what they need from the database."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.errors import InputError, quoted
from engine.month import fingerprints, progress
from engine.months import Month
from engine.store import db
from engine.store.schema import DEFAULT_SCHEMA

ORDERS = ("plan", "newest", "oldest")

#: The agreed backfill plan: 2024 newest to oldest, then 2023 with December first and then
#: newest to oldest, then 2022 newest to oldest. (year, month that goes first or None).
#: Months of other years follow, newest first.
PLAN_YEARS: tuple[tuple[int, int | None], ...] = ((2024, None), (2023, 12), (2022, None))

#: Without `--only`: every month that is not completed.
DEFAULT_SELECTION = frozenset({"missing", "failed", "interrupted", "stale", "regressed", "running"})

_WIDEST = (Month(2000, 1), Month(2100, 12))


@dataclass(frozen=True)
class PlannedMonth:
    """A month to work on, what its progress row said when planned, and its source's size
    (the weight the dashboard's ETA uses)."""

    month: Month
    selection: str  # missing | failed | interrupted | stale | regressed | running | completed
    records: int
    previous: progress.MonthState | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"month": str(self.month), "selection": self.selection, "records": self.records}


@dataclass(frozen=True)
class Plan:
    order: str
    months: tuple[PlannedMonth, ...]
    left_out: dict[str, int]  # months in range not selected, by selection

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "months": [m.to_dict() for m in self.months],
                "left_out": self.left_out}


def order_months(months: Iterable[Month], order: str) -> list[Month]:
    """`months` in the order `plan`, `newest` or `oldest`; raise `InputError` for another."""
    if order not in ORDERS:
        raise InputError(f"order {quoted(order)} is not one of {', '.join(ORDERS)}")
    if order == "newest":
        return sorted(months, reverse=True)
    if order == "oldest":
        return sorted(months)
    rank = {year: (i, first) for i, (year, first) in enumerate(PLAN_YEARS)}

    def key(month: Month) -> tuple[int, int, int]:
        if month.year in rank:
            position, first = rank[month.year]
            return position, 0 if month.month == first else 1, -month.month
        return len(PLAN_YEARS), 0, -(month.year * 12 + month.month)

    return sorted(months, key=key)


def parse_selection(text: str | None) -> frozenset[str]:
    """`failed,missing` → {"failed", "missing"}; `all` adds completed months; None: the default."""
    if text is None:
        return DEFAULT_SELECTION
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    if "all" in chosen:
        return DEFAULT_SELECTION | {"completed"}
    unknown = chosen - set(progress.SELECTIONS)
    if unknown or not chosen:
        raise InputError(f"--only takes a comma-separated list of {', '.join(progress.SELECTIONS)} "
                         f"or all, not {quoted(text)}")
    return frozenset(chosen)


def select(candidates: dict[Month, int], states: dict[Month, progress.MonthState],
           selection: frozenset[str], order: str) -> Plan:
    """Pick the candidate months (month → source records) whose state is selected, in order."""
    chosen: list[PlannedMonth] = []
    left_out: dict[str, int] = {}
    for month in order_months(candidates, order):
        state = states.get(month)
        kind = state.selection if state else "missing"
        if kind in selection:
            chosen.append(PlannedMonth(month, kind, candidates[month], state))
        else:
            left_out[kind] = left_out.get(kind, 0) + 1
    return Plan(order, tuple(chosen), dict(sorted(left_out.items())))


def build_plan(cursor: db.Cursor, *, first: Month | None, last: Month | None, order: str,
               selection: frozenset[str], engine_schema: str = DEFAULT_SCHEMA) -> Plan:
    """The months from `first` to `last` (default: all) that have curtailment, selected by
    their progress status and ordered."""
    low, high = first or _WIDEST[0], last or _WIDEST[1]
    if high < low:
        raise InputError(f"the range {low}..{high} runs backwards")
    records = fingerprints.records_per_month(cursor, low, high)
    return select(records, progress.month_states(cursor, low, high, engine_schema=engine_schema),
                  selection, order)
