"""How a month is cut into slices of consecutive days so that its work fits the memory budget.
Pure: sizes in, day ranges out.

A day is the unit: the formula pools a settlement period's farms, and every period lies in one
day, so days computed apart give exactly the rows the whole month gives. A month that fits is
one slice (the whole month), the common case. Each slice is extracted, recomputed and diffed
on its own, its missing rows written to Parquet; the month is still merged, verified and
recorded as one month in one transaction (`engine.month.reconcile`).

The weight of a day is what its work holds in memory: its curtailment records times the miner
models (about the expected rows) plus the calculations it already has. Measured on a month of
2.16M expected rows (`benchmarks/dense.py`): about 300 bytes per unit at the peak, with the
process's libraries taking about 250 MiB before any data; `BYTES_PER_UNIT` leaves a margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from engine.months import Days, Month

#: Peak bytes per unit of a day's weight (see above).
BYTES_PER_UNIT = 450
#: The process with Polars, DuckDB, PyArrow, connectorx and ADBC loaded, before any data.
BASE_MB = 350


@dataclass(frozen=True)
class DaySize:
    records: int  # curtailment records
    calculations: int  # rows the calculations table holds


def capacity(budget_mb: int, jobs: int = 1, base_mb: int = BASE_MB) -> int:
    """The weight one month may hold at once when `jobs` months share `budget_mb` MiB, of
    which the process holds `base_mb` before any data (at least `BASE_MB`)."""
    spare = budget_mb - max(BASE_MB, base_mb)
    return max(1, spare * 2**20 // (max(1, jobs) * BYTES_PER_UNIT))


def duckdb_memory_mb(budget_mb: int, jobs: int = 1, base_mb: int = BASE_MB) -> int:
    """What verification's DuckDB may hold for one of `jobs` months (it spills beyond)."""
    return max(64, (budget_mb - max(BASE_MB, base_mb)) // (2 * max(1, jobs)))


def weight(size: DaySize, models: int) -> int:
    return size.records * models + size.calculations


def plan(month: Month, sizes: Mapping[date, DaySize], models: int, capacity: int) -> list[Days]:
    """Consecutive day ranges covering `month`, each of weight at most `capacity` (a single day
    heavier than that is a slice of its own). The whole month when it fits.

    >>> from engine.months import Month
    >>> month = Month(2023, 12)
    >>> sizes = {date(2023, 12, d): DaySize(10, 0) for d in (1, 2, 3)}
    >>> [str(d) for d in plan(month, sizes, 3, capacity=60)]
    ['2023-12-01..2023-12-02', '2023-12-03..2023-12-31']
    >>> [str(d) for d in plan(month, sizes, 3, capacity=1000)]
    ['2023-12-01..2023-12-31']
    """
    weights = {day: weight(size, models) for day, size in sizes.items()}
    if sum(weights.values()) <= capacity:
        return [Days.of(month)]
    slices: list[Days] = []
    start, held = month.first_day, 0
    for day in month.days():
        heavy = weights.get(day, 0)
        if held and held + heavy > capacity:
            slices.append(Days(start, day))
            start, held = day, 0
        held += heavy
    slices.append(Days(start, month.next_first_day))
    return slices


def describe(slices: list[Days]) -> str:
    """`3 slices (2023-12-01..2023-12-10, …)` for the log."""
    return f"{len(slices)} slices ({', '.join(str(s) for s in slices)})"


