"""Formula versions: pure functions from a month's curtailment to the rows it implies.

No I/O, no clock, no settings. Each version is one function registered by name over
`kernel.v1`, where the arithmetic is written once (float64 through NumPy, in DESIGN.md's
order); this module pools the source (exact decimal sums, converted to float once), joins the
day's difficulty and turns the kernel's bitcoin into exact decimal columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date

import numpy as np
import polars as pl

from engine.errors import MissingDifficulty, SourceDataError
from engine.formula import decimals, kernel
from engine.formula.kernel import BLOCK_REWARD, BLOCKS_PER_PERIOD, network_terahash
from engine.formula.rounding import round8, round8_units, round8_units_exact
from engine.months import periods_in_day
from engine.store.config import MinerModel

KEY = ["settlement_date", "settlement_period", "farm_id", "miner_model"]
SOURCE_KEY = KEY[:3]
BITCOIN = pl.Decimal(18, 8)

#: The columns and types of every expected-rows frame.
EXPECTED_SCHEMA = pl.Schema({
    "settlement_date": pl.Date(),
    "settlement_period": pl.Int32(),
    "farm_id": pl.String(),
    "miner_model": pl.String(),
    "bitcoin_mined": BITCOIN,
    "difficulty": pl.Decimal(38, 10),
})

Formula = Callable[[pl.DataFrame, pl.DataFrame, Sequence[MinerModel]], pl.DataFrame]
FORMULAS: dict[str, Formula] = {}


def register(name: str) -> Callable[[Formula], Formula]:
    def add(function: Formula) -> Formula:
        FORMULAS[name] = function
        return function
    return add


def expected_rows(
    curtailment: pl.DataFrame,
    difficulty: pl.DataFrame,
    models: Sequence[MinerModel],
    version: str = "v1",
) -> pl.DataFrame:
    """Every calculation row the month's curtailment implies, sorted by key.

    `curtailment` has settlement_date, settlement_period, farm_id and a decimal volume;
    `difficulty` has settlement_date and a decimal difficulty. Raises `MissingDifficulty` for
    dates with qualifying curtailment and no difficulty, `SourceDataError` for rows that
    cannot be computed (bad period, null volume, non-positive difficulty).
    """
    try:
        formula = FORMULAS[version]
    except KeyError:
        raise ValueError(f"unknown formula {version!r}; known: {', '.join(FORMULAS)}") from None
    return formula(curtailment, difficulty, models)


@register("v1")
def formula_v1(
    curtailment: pl.DataFrame, difficulty: pl.DataFrame, models: Sequence[MinerModel]
) -> pl.DataFrame:
    """Formula v1, the one production used: `kernel.v1` on each (date, period, farm) and
    model, the period's farms pooled, a block reward of 3.125 on every date.

    Worked example: one farm curtailing 10 MWh in a period at difficulty 1e14, S19J_PRO
    (100 TH/s, 3050 W): miners = floor(10000 / 1.525) = 6557; network_th =
    715827882.6666666; period_btc = round8(0.0085875217...) = 0.00858752 = farm_btc.
    A second farm curtailing 10 MWh in the same period pools with it (20 MWh, 13114 miners)
    and each gets round8(0.01717504 * 10 / 20) = 0.00858752.
    """
    return _pooled_formula(curtailment, difficulty, models, "v1")


@register("halving")
def formula_halving(
    curtailment: pl.DataFrame, difficulty: pl.DataFrame, models: Sequence[MinerModel]
) -> pl.DataFrame:
    """`kernel.v1` with the block reward of the day: 6.25 BTC before the halving of
    2024-04-20, 3.125 from that day on. Opt-in (`--formula halving`); production used v1.

    Worked example: the v1 example on 2023-12-01 (10 MWh, difficulty 1e14, S19J_PRO) gives
    round8(6557 * 100 / 715827882.6666666 * 6.25 * 3) = 0.01717504; on 2024-04-20 and later
    it equals v1.
    """
    return _pooled_formula(curtailment, difficulty, models, "halving")


#: The first day of the 3.125 BTC block reward (the fourth halving).
HALVING_DAY = date(2024, 4, 20)
REWARD_BEFORE_HALVING = 6.25


def block_rewards(dates: pl.Series, version: str = "v1") -> np.ndarray:
    """The block reward each formula version uses on each date (float64, one per element).

    `v1` uses 3.125 throughout (what production did); `halving` uses 6.25 before 2024-04-20.
    """
    if version == "halving":
        before = (dates < HALVING_DAY).fill_null(False).to_numpy()
        return np.where(before, REWARD_BEFORE_HALVING, BLOCK_REWARD)
    if version in FORMULAS:
        return np.full(dates.len(), BLOCK_REWARD)
    raise ValueError(f"unknown formula {version!r}; known: {', '.join(FORMULAS)}")


def _pooled_formula(curtailment: pl.DataFrame, difficulty: pl.DataFrame,
                    models: Sequence[MinerModel], version: str) -> pl.DataFrame:
    periods = pooled_periods(curtailment)
    rows = _with_difficulty(periods, difficulty)
    farm_mwh = rows["farm_volume"].cast(pl.Float64).to_numpy()
    period_mwh = rows["period_volume"].cast(pl.Float64).to_numpy()
    day_difficulty = rows["difficulty"].cast(pl.Float64).to_numpy()
    reward = block_rewards(rows["settlement_date"], version)
    frames = []
    for model in models:
        steps = kernel.v1(farm_mwh, period_mwh, day_difficulty, model.power_w, model.hashrate_th, reward)
        frames.append(
            rows.select(
                *SOURCE_KEY, pl.lit(model.name).alias("miner_model"),
                # farm_btc is already toFixed(8): its units are exact.
                bitcoin_column(round8_units(steps.farm_btc)), "difficulty",
            )
        )
    return _finish(frames)


def pooled_periods(curtailment: pl.DataFrame) -> pl.DataFrame:
    """Qualifying (date, period, farm) keys with their exact Σ|volume| and the period's total.

    Several records of one farm in one period add up; a key qualifies when its Σ|volume| > 0.
    """
    validate_source(curtailment)
    farms = (
        curtailment.lazy()
        .group_by(SOURCE_KEY)
        .agg(farm_volume=pl.col("volume").cast(pl.Decimal(38, 10)).abs().sum())
        .filter(pl.col("farm_volume") > 0)
    )
    return (
        farms.with_columns(period_volume=pl.col("farm_volume").sum().over(SOURCE_KEY[:2]))
        .sort(SOURCE_KEY)
        .collect()
    )


def validate_source(curtailment: pl.DataFrame) -> None:
    """Raise `SourceDataError` for a null in a key or the volume, or a period outside the
    day's 46/48/50."""
    required = [*SOURCE_KEY, "volume"]
    nulls = curtailment.filter(pl.any_horizontal(pl.col(required).is_null()))
    if nulls.height:
        first = nulls.row(0, named=True)
        empty = " or ".join(c.removeprefix("settlement_") for c in required if first[c] is None)
        raise SourceDataError(
            f"{nulls.height} curtailment record(s) have no {empty} (first: "
            f"{first['settlement_date']} period {first['settlement_period']} farm {first['farm_id']})"
        )
    limits = pl.DataFrame(
        {"settlement_date": days, "last_period": [periods_in_day(d) for d in days]},
        schema={"settlement_date": pl.Date, "last_period": pl.Int32},
    ) if (days := curtailment["settlement_date"].unique().to_list()) else None
    if limits is None:
        return
    outside = curtailment.join(limits, on="settlement_date").filter(
        (pl.col("settlement_period") < 1) | (pl.col("settlement_period") > pl.col("last_period"))
    )
    if outside.height:
        first = outside.sort(SOURCE_KEY).row(0, named=True)
        raise SourceDataError(
            f"{outside.height} curtailment record(s) have a settlement period outside their "
            f"day (first: {first['settlement_date']} period {first['settlement_period']}, "
            f"farm {first['farm_id']}; that day has {first['last_period']} periods)"
        )


def one_miner_btc(difficulty: pl.DataFrame, models: Sequence[MinerModel],
                  version: str = "v1") -> pl.DataFrame:
    """Bitcoin one miner of each model earns in one period at each date's difficulty (with
    the block reward formula `version` uses on that date).

    This is the drift tolerance: summing |volume| in another order can move `miners` by one
    on an exact boundary, and never by more.
    """
    network_th = network_terahash(difficulty["difficulty"].cast(pl.Float64).to_numpy())
    reward = block_rewards(difficulty["settlement_date"], version)
    return pl.concat([
        difficulty.select(
            "settlement_date",
            pl.lit(model.name).alias("miner_model"),
            pl.Series("tolerance", kernel.period_btc(1.0, model.hashrate_th, network_th, reward,
                                                     rounded=False)),
        )
        for model in models
    ])


def bitcoin_column(units: np.ndarray, name: str = "bitcoin_mined") -> pl.Series:
    """A Decimal(18, 8) column whose unscaled integers are `units`: exact, no float on the way."""
    return decimals.from_units(units, scale=8, name=name)


def _with_difficulty(periods: pl.DataFrame, difficulty: pl.DataFrame) -> pl.DataFrame:
    rows = periods.join(
        difficulty.select("settlement_date", pl.col("difficulty").cast(pl.Decimal(38, 10))),
        on="settlement_date", how="left",
    )
    missing = rows.filter(pl.col("difficulty").is_null())["settlement_date"].unique()
    if missing.len():
        raise MissingDifficulty(missing.to_list())
    bad = rows.filter(pl.col("difficulty") <= 0)["settlement_date"].unique()
    if bad.len():
        raise SourceDataError(
            f"difficulty must be positive; it is not on {', '.join(map(str, sorted(bad)))}"
        )
    return rows


def _finish(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if not frames:
        return EXPECTED_SCHEMA.to_frame()
    rows = pl.concat(frames).with_columns(
        pl.col("settlement_period").cast(pl.Int32), pl.col("miner_model").cast(pl.String)
    )
    return rows.sort(KEY).select(EXPECTED_SCHEMA.names()).cast(EXPECTED_SCHEMA)


__all__ = [
    "BLOCKS_PER_PERIOD",
    "BLOCK_REWARD",
    "EXPECTED_SCHEMA",
    "FORMULAS",
    "HALVING_DAY",
    "KEY",
    "SOURCE_KEY",
    "block_rewards",
    "date",
    "expected_rows",
    "kernel",
    "network_terahash",
    "one_miner_btc",
    "pooled_periods",
    "register",
    "round8",
    "round8_units",
    "round8_units_exact",
]
