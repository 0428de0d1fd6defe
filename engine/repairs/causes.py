"""Why a row drifted or is duplicated: the older writers recomputed and matched. Pure.

Only the drift and duplicate rows are looked at (a handful per month), so this costs nothing
on a month that is right. Each cause is the formula version in use (`version`, with its block
reward) with one thing changed, recomputed with `engine.formula.kernel` through
`engine.repairs.legacy`. Each row gets the first cause that reproduces it, in this order:

1. `linear_sql`: its difficulty is the linear SQL's fixed D of its year and its bitcoin is
   `|Σ volume| × k × 5e13 / D` (this comes first: 2025's D is also the fallback value);
2. `fallback_difficulty`: its difficulty is the fallback 108105433845147, not the day's;
3. `stale_difficulty`: its difficulty is not the day's and its bitcoin is the version's at
   that difficulty (within the row's tolerance at it);
4. `halving_reward`: its bitcoin is what the other block reward gives (6.25 before
   2024-04-20 under v1, 3.125 under `--formula halving`);
5. `per_farm_formula`: its bitcoin is the version's on the farm's own volume, unpooled;
6. `per_record_rows`: its bitcoin is the per-record writer's for one of the key's records;
7. `unknown`: none of these.

A duplicate copy that agrees with the recompute can only be `per_record_rows` or `unknown`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import polars as pl

from engine.formula import HALVING_DAY, KEY, block_rewards
from engine.month.diff import ROUNDING, Diff
from engine.repairs import legacy
from engine.store.config import MinerModel

CAUSES = ("fallback_difficulty", "stale_difficulty", "per_farm_formula", "linear_sql",
          "per_record_rows", "halving_reward", "unknown")
#: How close an unrounded writer's value must be: its digits past the 10th decimal are lost
#: on the way through the snapshot, and the float arithmetic may differ in the last bits.
EXACT = 1e-9


def explain(diff: Diff, curtailment: pl.DataFrame, models: Sequence[MinerModel],
            version: str = "v1") -> Diff:
    """`diff` with a `cause` column on its drift and duplicate rows (see the module doc)."""
    return replace(diff, drift=with_causes(diff.drift, curtailment, models, version),
                   duplicates=with_causes(diff.duplicates, curtailment, models, version))


def with_causes(rows: pl.DataFrame, curtailment: pl.DataFrame, models: Sequence[MinerModel],
                version: str = "v1") -> pl.DataFrame:
    """`rows` (drift or duplicate rows as `diff.compare` returns them) with a `cause` column."""
    if rows.is_empty():
        return rows.with_columns(cause=pl.lit(None, pl.String))
    return rows.with_columns(cause=pl.Series(find_causes(rows, curtailment, models, version)))


def count(diff: Diff) -> dict[str, int]:
    """Drift and duplicate rows per cause, every cause listed (0 when none)."""
    counts = dict.fromkeys(CAUSES, 0)
    for frame in (diff.drift, diff.duplicates):
        if "cause" in frame.columns:
            for cause, n in frame["cause"].value_counts().iter_rows():
                counts[cause] += n
    return counts


def find_causes(rows: pl.DataFrame, curtailment: pl.DataFrame, models: Sequence[MinerModel],
                version: str = "v1") -> list[str]:
    """The probable cause of each row, in order. `rows` has the key, bitcoin_mined, difficulty,
    expected_difficulty and tolerance (and `matches` for duplicate copies)."""
    ctx = legacy.context(rows.with_row_index("_row"), curtailment, models)
    stored = ctx["bitcoin_mined"].cast(pl.Float64).to_numpy()
    stored_d, day_d = ctx["difficulty"].cast(pl.Float64), ctx["expected_difficulty"].cast(pl.Float64)
    tolerance = ctx["tolerance"].to_numpy()
    agrees = ctx["matches"].to_numpy() if "matches" in ctx.columns else np.zeros(ctx.height, bool)
    other_day = (stored_d != day_d).to_numpy()
    causes = np.full(ctx.height, "", dtype=object)

    def near(values: np.ndarray, allowance: np.ndarray | float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.abs(stored - values) <= allowance

    def assign(cause: str, mask: np.ndarray) -> None:
        causes[(causes == "") & ~agrees & mask] = cause

    for d, in_year in legacy.linear_difficulties(ctx["settlement_date"]):
        fixed = (stored_d == float(d)).to_numpy()
        values = legacy.linear_btc(ctx, d)
        assign("linear_sql", in_year & fixed & near(values, EXACT + EXACT * np.abs(values)))
    assign("fallback_difficulty", other_day & (stored_d == float(legacy.FALLBACK_DIFFICULTY)).to_numpy())
    at_stored = ROUNDING + (tolerance - ROUNDING) * (day_d / stored_d).to_numpy()
    stale = legacy.pooled_btc(ctx, "difficulty", version=version)
    assign("stale_difficulty", other_day & near(stale, at_stored))
    other = "v1" if version == "halving" else "halving"
    before_halving = (ctx["settlement_date"] < HALVING_DAY).to_numpy()
    other_values = legacy.pooled_btc(ctx, "expected_difficulty", version=other)
    assign("halving_reward", before_halving & near(other_values, 2 * tolerance))
    per_farm = legacy.pooled_btc(ctx, "expected_difficulty", version=version, farm_is_period=True)
    pooled = (ctx["farm_mwh"] < ctx["period_mwh"]).fill_null(False).to_numpy()
    assign("per_farm_formula", pooled & near(per_farm, ROUNDING))
    per_record = _matches_a_record(ctx, version)
    causes[(causes == "") & per_record] = "per_record_rows"
    causes[causes == ""] = "unknown"
    return causes.tolist()


def _matches_a_record(ctx: pl.DataFrame, version: str) -> np.ndarray:
    """Whether each row's bitcoin is the per-record writer's for one of its key's records."""
    several = ctx.select("_row", "settlement_date", "bitcoin_mined", "expected_difficulty", "power_w",
                         "hashrate_th", "records").filter(pl.col("records").list.len() >= 2)
    if several.is_empty():
        return np.zeros(ctx.height, dtype=bool)
    each = several.explode("records")
    values = legacy.record_btc(each["records"].to_numpy(),
                               each["expected_difficulty"].cast(pl.Float64).to_numpy(),
                               each["power_w"].to_numpy(), each["hashrate_th"].to_numpy(),
                               block_rewards(each["settlement_date"], version))
    with np.errstate(invalid="ignore"):
        hit = np.abs(each["bitcoin_mined"].cast(pl.Float64).to_numpy() - values) <= EXACT + EXACT * values
    matched = each.select("_row").with_columns(hit=pl.Series(hit)).group_by("_row").agg(pl.col("hit").any())
    out = np.zeros(ctx.height, dtype=bool)
    rows = matched.filter(pl.col("hit"))["_row"].to_numpy()
    out[rows] = True
    return out


__all__ = ["CAUSES", "KEY", "count", "explain", "find_causes", "with_causes"]
