"""The notebook views of a range of months: coverage, missing rows per slot, the farms and days
with the most missing energy, diff summaries, run timings. Pure: frames in, frames out.

`engine.explore` reads the frames (from the database or from the Parquet the pipeline wrote)
into a `Gaps`; everything here works the same on either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from engine.formula import KEY, SOURCE_KEY, pooled_periods
from engine.months import Month, periods_in_day

#: The classes of a diff, in the order the pipeline writes them.
KINDS = ("missing", "drift", "orphans", "duplicates")
#: What a coverage can be grouped by: a column of the rows or one derived from the date.
GROUPINGS = ("month", "year", "settlement_date", "settlement_period", "farm_id", "miner_model")
#: The rows a run step's speed is measured in: the month's expected rows, except the load,
#: which is measured in the rows it inserted. `record` only writes counts: it has no speed.
STEP_ROWS = {"extract": "expected", "recompute": "expected", "diff": "expected",
             "load": "inserted", "verify": "expected"}


@dataclass(frozen=True)
class Gaps:
    """A range of months as one source shows them.

    `source` is `database` (read from the database now and recomputed) or `recorded` (the
    Parquet the newest runs wrote: the table as it was before their load). `expected` has the
    key, bitcoin_mined and difficulty; `existing` the table's rows; `missing` the expected rows
    with no existing row; `drift`, `orphans` and `duplicates` the existing rows of those classes
    with whatever columns their source has (`cause`, when the pipeline wrote one).
    """

    months: tuple[Month, ...]
    source: str
    curtailment: pl.DataFrame
    expected: pl.DataFrame
    existing: pl.DataFrame
    missing: pl.DataFrame
    drift: pl.DataFrame
    orphans: pl.DataFrame
    duplicates: pl.DataFrame

    def frames(self) -> dict[str, pl.DataFrame]:
        """The four diff classes by name."""
        return {kind: getattr(self, kind) for kind in KINDS}

    def counts(self) -> dict[str, int]:
        """Rows per class, with `expected` and `present` (expected keys that are present)."""
        return {"expected": self.expected.height,
                "present": self.expected.height - self.missing.height,
                **{kind: frame.height for kind, frame in self.frames().items()}}

    def to_dict(self) -> dict[str, Any]:
        return {"months": [str(m) for m in self.months], "source": self.source,
                "rows": self.counts()}


def coverage(gaps: Gaps, by: str | Sequence[str] = "month") -> pl.DataFrame:
    """Expected, present and missing rows (and drift, orphan and duplicate rows) per group,
    with `percent` present (100 where nothing is expected), sorted by the group.

    `by` is one or more of `GROUPINGS`. Raises `ValueError` for any other.
    """
    columns = [by] if isinstance(by, str) else list(by)
    if unknown := [c for c in columns if c not in GROUPINGS]:
        raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPINGS)}")
    counts: pl.DataFrame | None = None
    for name, frame in (("expected", gaps.expected), *gaps.frames().items()):
        grouped = (frame.lazy().select(_grouping(c) for c in columns)
                   .group_by(columns).agg(pl.len().alias(name)).collect())
        counts = grouped if counts is None else counts.join(grouped, on=columns, how="full",
                                                            coalesce=True)
    assert counts is not None
    counts = counts.with_columns(pl.col(list(("expected", *KINDS))).fill_null(0).cast(pl.Int64))
    return counts.with_columns(present=pl.col("expected") - pl.col("missing")).with_columns(
        percent=pl.when(pl.col("expected") > 0)
        .then((100.0 * pl.col("present") / pl.col("expected")).round(2)).otherwise(100.0),
    ).select(*columns, "expected", "present", "missing", "percent", "drift", "orphans",
             "duplicates").sort(columns)


def missing_keys(gaps: Gaps) -> pl.DataFrame:
    """Each (date, period, farm) with a missing row: how many model rows are missing and the
    energy behind it (`missing_mwh`: the farm's Σ|volume| in that period, counted once), with
    the farm's lead party. Raises `SourceDataError` for curtailment the formula refuses."""
    keys = (gaps.missing.lazy().with_columns(pl.col("settlement_period").cast(pl.Int32))
            .group_by(SOURCE_KEY).agg(missing_rows=pl.len()).collect())
    energy = pooled_periods(gaps.curtailment.with_columns(pl.col("settlement_period").cast(pl.Int32)))
    names = _lead_parties(gaps.curtailment)
    return (keys.join(energy.select(*SOURCE_KEY, missing_mwh=pl.col("farm_volume").cast(pl.Float64)),
                      on=SOURCE_KEY, how="left")
            .join(names, on="farm_id", how="left")
            .with_columns(pl.col("missing_mwh").fill_null(0.0))
            .sort(SOURCE_KEY))


def missing_by_period(gaps: Gaps) -> pl.DataFrame:
    """One row per settlement period of every day of the months (46, 48 or 50 a day), with the
    missing rows, the farms with a missing row and their energy: the calendar heatmap's cells.

    Columns: settlement_date, settlement_period, missing_rows, missing_farms, missing_mwh.
    """
    days = [day for month in gaps.months for day in month.days()]
    grid = pl.DataFrame(
        {"settlement_date": [d for d in days for _ in range(periods_in_day(d))],
         "settlement_period": [p for d in days for p in range(1, periods_in_day(d) + 1)]},
        schema={"settlement_date": pl.Date, "settlement_period": pl.Int32},
    )
    cells = missing_keys(gaps).group_by(SOURCE_KEY[:2]).agg(
        missing_rows=pl.col("missing_rows").sum().cast(pl.Int64),
        missing_farms=pl.len().cast(pl.Int64), missing_mwh=pl.col("missing_mwh").sum())
    return grid.join(cells, on=SOURCE_KEY[:2], how="left").with_columns(
        pl.col("missing_rows", "missing_farms").fill_null(0), pl.col("missing_mwh").fill_null(0.0),
    ).sort(SOURCE_KEY[:2])


def top_farms(gaps: Gaps, n: int | None = 10) -> pl.DataFrame:
    """The `n` farms (all with `None`) with the most missing energy: farm_id, lead_party_name,
    missing_mwh, missing_periods (keys), missing_rows, days, first_day, last_day; most energy
    first."""
    return (missing_keys(gaps).group_by("farm_id", "lead_party_name").agg(
        missing_mwh=pl.col("missing_mwh").sum(), missing_periods=pl.len().cast(pl.Int64),
        missing_rows=pl.col("missing_rows").sum().cast(pl.Int64),
        days=pl.col("settlement_date").n_unique().cast(pl.Int64),
        first_day=pl.col("settlement_date").min(), last_day=pl.col("settlement_date").max(),
    ).sort(["missing_mwh", "farm_id"], descending=[True, False]).pipe(_head, n))


def top_days(gaps: Gaps, n: int | None = 10) -> pl.DataFrame:
    """The `n` days (all with `None`) with the most missing energy: settlement_date,
    missing_mwh, missing_rows, farms, periods (with a missing row); most energy first."""
    return (missing_keys(gaps).group_by("settlement_date").agg(
        missing_mwh=pl.col("missing_mwh").sum(), missing_rows=pl.col("missing_rows").sum().cast(pl.Int64),
        farms=pl.col("farm_id").n_unique().cast(pl.Int64),
        periods=pl.col("settlement_period").n_unique().cast(pl.Int64),
    ).sort(["missing_mwh", "settlement_date"], descending=[True, False]).pipe(_head, n))


def diff_summary(frame: pl.DataFrame, by: Sequence[str] = ("month", "miner_model")) -> pl.DataFrame:
    """Rows of one diff class per group (and per `cause` when the frame has one), with the
    summed bitcoin difference `delta` (stored minus expected) when the frame has it.

    Works on any class's frame whatever its other columns; an empty frame gives an empty
    summary. Raises `ValueError` for a grouping outside `GROUPINGS`.
    """
    columns = [*by, *(["cause"] if "cause" in frame.columns else [])]
    if unknown := [c for c in by if c not in GROUPINGS]:
        raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPINGS)}")
    aggregates = [pl.len().cast(pl.Int64).alias("rows")]
    if "delta" in frame.columns:
        aggregates.append(pl.col("delta").cast(pl.Float64).sum().alias("delta"))
    if frame.is_empty() or not set(KEY) <= set(frame.columns):
        return pl.DataFrame(schema={**dict.fromkeys(columns, pl.String), "rows": pl.Int64,
                                    **({"delta": pl.Float64} if "delta" in frame.columns else {})})
    return (frame.lazy().with_columns(_grouping(c) for c in by)
            .group_by(columns).agg(aggregates).sort(columns).collect())


def run_steps(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per (run, step) from `explore.runs`: run_id, month, command, status, step,
    seconds, rows (see `STEP_ROWS`) and rows_per_second (null where a step has no rows)."""
    records = []
    for run in runs.iter_rows(named=True):
        timings = json.loads(run["timings"]) if run["timings"] else {}
        counts = json.loads(run["rows"]) if run["rows"] else {}
        for step, seconds in timings.items():
            rows = counts.get(STEP_ROWS.get(step, ""))
            records.append({
                "run_id": run["id"], "month": run["month"], "command": run["command"],
                "status": run["status"], "step": step, "seconds": float(seconds),
                "rows": rows, "rows_per_second": rows / seconds if rows and seconds > 0 else None,
            })
    return pl.DataFrame(records, schema={
        "run_id": pl.Int64, "month": pl.String, "command": pl.String, "status": pl.String,
        "step": pl.String, "seconds": pl.Float64, "rows": pl.Int64, "rows_per_second": pl.Float64,
    }, orient="row")


def time_per_month(runs: pl.DataFrame) -> pl.DataFrame:
    """Per month, its newest run that recorded timings: month, run_id, status, seconds (the sum
    of its steps), expected, inserted and expected rows per second; plus `runs`, how many runs
    the month had in all. Sorted by month."""
    steps = run_steps(runs)
    totals = steps.group_by("run_id", "month", "status").agg(seconds=pl.col("seconds").sum())
    counts = pl.DataFrame(
        [{"run_id": r["id"], **_counts(r["rows"])} for r in runs.iter_rows(named=True)],
        schema={"run_id": pl.Int64, "expected": pl.Int64, "inserted": pl.Int64}, orient="row")
    newest = (totals.sort("run_id").group_by("month").agg(pl.all().last())
              .join(counts, on="run_id", how="left")
              .join(runs.group_by("month").agg(runs=pl.len().cast(pl.Int64)), on="month", how="left"))
    return newest.with_columns(
        rows_per_second=pl.when(pl.col("seconds") > 0).then(pl.col("expected") / pl.col("seconds")),
    ).select("month", "run_id", "status", "seconds", "expected", "inserted", "rows_per_second",
             "runs").sort("month")


def step_share(runs: pl.DataFrame) -> pl.DataFrame:
    """Where the time goes: per step, its total seconds over the runs, its share of all
    (percent) and its median rows per second; the slowest step first."""
    steps = run_steps(runs)
    total = steps["seconds"].sum()
    return steps.group_by("step").agg(
        seconds=pl.col("seconds").sum(), runs=pl.len().cast(pl.Int64),
        median_rows_per_second=pl.col("rows_per_second").median(),
    ).with_columns(
        percent=pl.when(pl.lit(total) > 0).then((100.0 * pl.col("seconds") / total).round(1)),
    ).sort(["seconds", "step"], descending=[True, False])


def _grouping(column: str) -> pl.Expr:
    if column == "month":
        return pl.col("settlement_date").dt.strftime("%Y-%m").alias("month")
    if column == "year":
        return pl.col("settlement_date").dt.year().alias("year")
    if column == "settlement_period":
        return pl.col(column).cast(pl.Int32)
    return pl.col(column)


def _head(frame: pl.DataFrame, n: int | None) -> pl.DataFrame:
    return frame if n is None else frame.head(n)


def _lead_parties(curtailment: pl.DataFrame) -> pl.DataFrame:
    if "lead_party_name" not in curtailment.columns:
        return pl.DataFrame(schema={"farm_id": pl.String, "lead_party_name": pl.String})
    return curtailment.group_by("farm_id").agg(pl.col("lead_party_name").drop_nulls().first())


def _counts(rows: str | None) -> dict[str, int | None]:
    counts = json.loads(rows) if rows else {}
    return {"expected": counts.get("expected"), "inserted": counts.get("inserted")}
