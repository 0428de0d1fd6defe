"""The older writers of the calculations table, recomputed. Pure: frames in, frames out.

Every v1-like writer is `engine.formula.kernel.v1` with its variant as a parameter (another
difficulty, no pooling, no floor, no rounding, another reward); only the linear SQL, which is
not v1 at all, has arithmetic of its own here.

Production's history was written by several formulas besides v1. What is known of them:

- fallback difficulty: v1 with 108105433845147 whenever the day's difficulty was not fetched;
- stale difficulty: v1 with another day's difficulty;
- per-farm variant: v1 applied to each farm's own Σ|volume| (floor per farm, no pooling);
- linear SQL: `|Σ volume| × k × 5e13 / D` per (date, period, farm), the sum taken before the
  absolute value, no floor, no rounding, k per model and a fixed D per year (stored as the
  difficulty);
- per-record rows: v1's arithmetic without floor or rounding on each record's own |volume|,
  one row per record (so keys repeat);
- halving reward: 6.25 BTC a block instead of 3.125 (or the reverse, under `--formula halving`).

`causes` recomputes these for the few rows that drifted and matches them; `damage` writes
them into clean rows in known numbers, for the demo and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import polars as pl

from engine.formula import HALVING_DAY, KEY, SOURCE_KEY, block_rewards, kernel, pooled_periods
from engine.store.config import MinerModel

FALLBACK_DIFFICULTY = Decimal(108105433845147)
#: The linear SQL's constant per model (BTC per MWh at D = 5e13).
LINEAR_K = {"S19J_PRO": 0.00021, "S9": 0.00011, "M20S": 0.00016}
#: The linear SQL's fixed difficulty per year (2025 used either).
LINEAR_DIFFICULTY: dict[int, tuple[int, ...]] = {
    2022: (25000000000000,),
    2023: (37935772752142,),
    2024: (68980189436404,),
    2025: (108105433845147, 110568428300952),
}
LINEAR_SCALE = 5e13
#: Bitcoin of the unrounded writers is stored with this many decimals.
EXACT_SCALE = 18
EXACT_BITCOIN = pl.Decimal(38, EXACT_SCALE)
#: `damage` draws its rows from a random sample of this many.
SAMPLE = 20_000


def context(rows: pl.DataFrame, curtailment: pl.DataFrame,
            models: Sequence[MinerModel]) -> pl.DataFrame:
    """`rows` (keyed like the calculations) with what every older writer needs: the farm's and
    the period's Σ|volume| (`farm_mwh`, `period_mwh`), the signed Σ volume, each record's
    |volume| (`records`, a list), and the model's `power_w`, `hashrate_th` and `linear_k` (null
    for an unknown model), in the order of `rows`. Only the periods of `rows` are read from
    `curtailment`."""
    source = curtailment.with_columns(pl.col("settlement_period").cast(pl.Int32)).join(
        rows.select(SOURCE_KEY[:2]).unique(), on=SOURCE_KEY[:2], how="semi")
    pooled = pooled_periods(source).select(
        *SOURCE_KEY, farm_mwh=pl.col("farm_volume").cast(pl.Float64),
        period_mwh=pl.col("period_volume").cast(pl.Float64))
    records = source.group_by(SOURCE_KEY).agg(
        signed_volume=pl.col("volume").cast(pl.Decimal(38, 10)).sum(),
        records=pl.col("volume").cast(pl.Float64).abs().sort(),
    )
    specs = pl.DataFrame(
        {"miner_model": [m.name for m in models], "power_w": [m.power_w for m in models],
         "hashrate_th": [m.hashrate_th for m in models],
         "linear_k": [LINEAR_K.get(m.name) for m in models]},
        schema={"miner_model": pl.String, "power_w": pl.Float64, "hashrate_th": pl.Float64,
                "linear_k": pl.Float64})
    return (rows.join(pooled, on=SOURCE_KEY, how="left", maintain_order="left")
            .join(records, on=SOURCE_KEY, how="left", maintain_order="left")
            .join(specs, on="miner_model", how="left", maintain_order="left"))


def pooled_btc(ctx: pl.DataFrame, difficulty: str | pl.Series, *, version: str = "v1",
               farm_is_period: bool = False) -> np.ndarray:
    """`kernel.v1` (with `version`'s reward) per row of a `context` frame, at the difficulty in
    column `difficulty` (or a Series); with `farm_is_period`, the per-farm variant. Float BTC,
    rounded to 8 decimals as v1 rounds; NaN where the row lacks an input."""
    values = ctx[difficulty] if isinstance(difficulty, str) else difficulty
    return kernel.v1(
        ctx["farm_mwh"].to_numpy(), None if farm_is_period else ctx["period_mwh"].to_numpy(),
        values.cast(pl.Float64).to_numpy(), ctx["power_w"].to_numpy(), ctx["hashrate_th"].to_numpy(),
        block_rewards(ctx["settlement_date"], version),
    ).farm_btc


def linear_btc(ctx: pl.DataFrame, difficulty: int) -> np.ndarray:
    """The linear SQL's bitcoin per row at the fixed `difficulty` (float; NaN for a model
    it did not know)."""
    signed = ctx["signed_volume"].cast(pl.Float64).abs().to_numpy()
    return signed * ctx["linear_k"].to_numpy() * LINEAR_SCALE / float(difficulty)


def linear_difficulties(days: pl.Series) -> list[tuple[int, np.ndarray]]:
    """Each fixed difficulty the linear SQL used, with a mask of the `days` in its year."""
    years = days.dt.year().to_numpy()
    return [(d, years == year) for year, fixed in LINEAR_DIFFICULTY.items() for d in fixed]


def record_btc(records: np.ndarray, day_difficulty: kernel.Floats, power_w: kernel.Floats,
               hashrate_th: kernel.Floats, reward: kernel.Floats = kernel.BLOCK_REWARD) -> np.ndarray:
    """The per-record writer's bitcoin for each record |volume|: `kernel.v1` with no floor and
    no rounding, the record alone in its period (NaN for a record of 0)."""
    return kernel.v1(records, None, day_difficulty, power_w, hashrate_th, reward,
                     floor=False, rounded=False).farm_btc


# --- the demo's and the tests' damage --------------------------------------------------------

#: Rows per cause the demo damages (per_record_rows: keys, each becoming one row per record).
DEMO_DAMAGE = {"fallback_difficulty": 12, "stale_difficulty": 10, "per_farm_formula": 9,
               "linear_sql": 8, "per_record_rows": 5, "halving_reward": 7, "unknown": 3}


@dataclass(frozen=True)
class Damage:
    """Calculation rows after the older writers had their way, and how many rows each wrote
    (`per_record_rows` counts the rows written, each key's copies all included)."""

    rows: pl.DataFrame
    counts: dict[str, int]


def damage(present: pl.DataFrame, curtailment: pl.DataFrame, difficulty: pl.DataFrame,
           models: Sequence[MinerModel], per_cause: Mapping[str, int] = DEMO_DAMAGE, *,
           seed: int = 4) -> Damage:
    """Rewrite rows of `present` (expected-rows schema, all correct) as the older writers would
    have, `per_cause[cause]` rows each (keys for `per_record_rows`), each damaged row far
    enough from v1 to be drift. Fewer when too few rows qualify: `counts` says how many.

    Only rows that are right are damaged (never an orphan, never a row already drifted).
    `bitcoin_mined` comes back as Decimal(38, 18), as the unrounded writers stored it.
    """
    if present.is_empty():
        return Damage(present.with_columns(pl.col("bitcoin_mined").cast(EXACT_BITCOIN)), {})
    # A random sample is plenty to draw from, and keeps this quick on 36 months.
    sample = present.with_row_index("_row").sample(n=min(present.height, SAMPLE), seed=seed)
    rows = context(sample, curtailment, models).with_columns(
        v1=pl.col("bitcoin_mined").cast(pl.Float64))
    tolerance = _one_miner(rows) * rows["farm_mwh"].to_numpy() / rows["period_mwh"].to_numpy()
    # Only rows that are right now: a key with curtailment, a known model, v1 at the day's
    # difficulty (the demo's backlog has drifted some already; those are not counted twice).
    day = rows.select("settlement_date").join(
        difficulty.select("settlement_date", day=pl.col("difficulty").cast(pl.Decimal(38, 10))),
        on="settlement_date", how="left", maintain_order="left")["day"]
    with np.errstate(invalid="ignore"):
        right = np.abs(pooled_btc(rows, day) - rows["v1"].to_numpy()) < 5e-9
    qualifies = (rows["farm_mwh"].is_not_null() & rows["power_w"].is_not_null()
                 & (rows["difficulty"] == day)).fill_null(False).to_numpy() & right
    tolerance = np.where(qualifies, tolerance, 0.0)
    order = np.random.default_rng(seed).permutation(rows.height)
    used = np.zeros(rows.height, dtype=bool)
    replaced: list[pl.DataFrame] = []
    counts: dict[str, int] = {}
    for cause, wanted in per_cause.items():
        values, new_difficulty, eligible = _damaged(cause, rows, difficulty, tolerance)
        eligible = eligible & qualifies  # never an orphan: those are a class of their own
        picks = order[eligible[order] & ~used[order]][:wanted]
        used[picks] = True
        if cause == "per_record_rows":
            frame = _per_record_rows(rows[picks.tolist()], models)
        else:
            frame = rows[picks.tolist()].with_columns(
                bitcoin_mined=_exact(values[picks]),
                difficulty=new_difficulty[picks].cast(pl.Decimal(38, 10)))
        counts[cause] = frame.height
        replaced.append(frame.select(present.columns))
    damaged = rows.filter(pl.Series(used)).select("_row")
    kept = present.with_row_index("_row").join(damaged, on="_row", how="anti").select(present.columns)
    out = pl.concat([kept.with_columns(pl.col("bitcoin_mined").cast(EXACT_BITCOIN)),
                     *[f.with_columns(pl.col("bitcoin_mined").cast(EXACT_BITCOIN)) for f in replaced]])
    return Damage(out.sort(KEY), counts)


def _damaged(cause: str, rows: pl.DataFrame, difficulty: pl.DataFrame,
             tolerance: np.ndarray) -> tuple[np.ndarray, pl.Series, np.ndarray]:
    """What `cause` would have stored per row (bitcoin, difficulty) and which rows it can
    damage so that the result is unmistakably that cause's drift."""
    day = rows["difficulty"]
    v1 = rows["v1"].to_numpy()

    def beyond(values: np.ndarray) -> np.ndarray:
        return np.abs(values - v1) > 2 * tolerance + 1e-7

    if cause == "fallback_difficulty":
        fallback = pl.Series([FALLBACK_DIFFICULTY] * rows.height, dtype=pl.Decimal(38, 10))
        return pooled_btc(rows, fallback), fallback, (day != fallback).fill_null(False).to_numpy()
    if cause == "stale_difficulty":
        stale = rows.select("settlement_date").join(
            _other_day(difficulty), on="settlement_date", how="left", maintain_order="left")["stale"]
        fixed = {Decimal(d) for ds in LINEAR_DIFFICULTY.values() for d in ds} | {FALLBACK_DIFFICULTY}
        ok = (stale.is_not_null() & ~stale.is_in(list(fixed))).fill_null(False)
        return pooled_btc(rows, stale.fill_null(day)), stale, ok.to_numpy()
    if cause == "per_farm_formula":
        values = pooled_btc(rows, "difficulty", farm_is_period=True)
        pooled = (rows["farm_mwh"] < rows["period_mwh"]).fill_null(False).to_numpy()
        return values, day, beyond(values) & pooled
    if cause == "linear_sql":
        values, fixed_d = np.full(rows.height, np.nan), np.zeros(rows.height, dtype=np.int64)
        for d, in_year in reversed(linear_difficulties(rows["settlement_date"])):
            values = np.where(in_year, linear_btc(rows, d), values)
            fixed_d = np.where(in_year, d, fixed_d)
        stored = pl.Series([Decimal(int(d)) for d in fixed_d], dtype=pl.Decimal(38, 10))
        return values, stored, np.isfinite(values) & beyond(values) & (fixed_d > 0)
    if cause == "halving_reward":
        values = pooled_btc(rows, "difficulty", version="halving")
        return values, day, (rows["settlement_date"] < HALVING_DAY).to_numpy() & beyond(values)
    if cause == "per_record_rows":
        several = rows["records"].list.len() >= 2
        nonzero = rows["records"].list.min() > 0
        return v1, day, (several & nonzero).fill_null(False).to_numpy()
    if cause == "unknown":
        values = v1 * 1.5 + 0.00012345
        return values, day, beyond(values) & (v1 > 0)
    raise ValueError(f"unknown cause {cause!r}")


def _per_record_rows(rows: pl.DataFrame, models: Sequence[MinerModel]) -> pl.DataFrame:
    by_name = {m.name: m for m in models}
    frames = []
    for row in rows.iter_rows(named=True):
        model = by_name[row["miner_model"]]
        values = record_btc(np.array(row["records"]), float(row["difficulty"]), model.power_w,
                            model.hashrate_th)
        frames.append(pl.DataFrame([row] * len(values), schema=rows.schema)
                      .with_columns(bitcoin_mined=_exact(values)))
    return pl.concat(frames) if frames else rows


def _other_day(difficulty: pl.DataFrame) -> pl.DataFrame:
    """Per date, the difficulty of the nearest earlier date whose difficulty differs (else
    the nearest later one): what a stale cache would have served."""
    days = difficulty.sort("settlement_date").with_columns(pl.col("difficulty").cast(pl.Decimal(38, 10)))
    change = pl.col("difficulty") != pl.col("difficulty").shift(1)
    runs = days.with_columns(run=change.fill_null(True).cum_sum())
    last_of_run = runs.group_by("run").agg(pl.col("difficulty").last()).sort("run")
    previous = last_of_run.with_columns(stale=pl.col("difficulty").shift(1))
    following = last_of_run.with_columns(stale=pl.col("difficulty").shift(-1))
    stale = runs.join(previous.select("run", "stale"), on="run").join(
        following.select("run", later="stale"), on="run")
    return stale.select("settlement_date", stale=pl.coalesce("stale", "later"))


def _one_miner(rows: pl.DataFrame) -> np.ndarray:
    network_th = kernel.network_terahash(rows["difficulty"].cast(pl.Float64).to_numpy())
    return kernel.period_btc(1.0, rows["hashrate_th"].to_numpy(), network_th,
                             block_rewards(rows["settlement_date"]), rounded=False)


def _exact(values: np.ndarray) -> pl.Series:
    """Floats as the unrounded writers stored them: every digit of the shortest repr, up to 18
    decimals."""
    quantum = Decimal(1).scaleb(-EXACT_SCALE)
    return pl.Series("bitcoin_mined", [Decimal(repr(float(v))).quantize(quantum) for v in values],
                     dtype=EXACT_BITCOIN)


__all__ = ["DEMO_DAMAGE", "FALLBACK_DIFFICULTY", "LINEAR_DIFFICULTY", "LINEAR_K", "Damage",
           "context", "damage", "linear_btc", "pooled_btc", "record_btc"]
