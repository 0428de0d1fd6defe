"""Realistic, deterministic synthetic data for the demo. Pure: numbers in, frames out.

- farms: the real BM units and capacities from `engine/reference/bmu_mapping.json`;
- curtailment: more in winter and at night, on windy spells (an AR(1) weather factor), more
  for large farms; several bid acceptances per farm and period; the odd zero or positive
  volume (the sign is not trusted); 46 and 50 period days on the clock changes;
- difficulty: the real 2024 values, a smooth fortnightly-adjusted curve for other years;
- the production backlog: most of 2023 missing, parts of 2022 and 2024 present, a few rows
  with a stale difficulty (drift) and a few with no curtailment behind them (orphans).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl

from engine.formula import decimals
from engine.months import Month, periods_in_day

FALLBACK_DIFFICULTY = 108105433845147
# Keys per day, calibrated so 2022-01..2024-12 holds about 504k qualifying keys (~700k records).
_KEYS_PER_DAY = 480.0
_EXTRA_RECORDS = 0.39  # mean extra bid acceptances per curtailed farm and period


@dataclass(frozen=True)
class Farm:
    farm_id: str
    lead_party_name: str
    capacity_mw: float


def load_farms(path: Path) -> list[Farm]:
    """The wind BM units that have a capacity in the Elexon mapping file."""
    units = json.loads(path.read_text())
    return [
        Farm(u["elexonBmUnit"], u.get("leadPartyName", ""), float(u["generationCapacity"]))
        for u in units if u.get("generationCapacity") and float(u["generationCapacity"]) > 0
    ]


def curtailment(months: list[Month], farms: list[Farm], seed: int = 2024) -> pl.DataFrame:
    """Curtailment records for every day of `months`, in the production table's columns."""
    rng = np.random.default_rng(seed)
    days = [d for m in months for d in m.days()]
    counts = np.array([periods_in_day(d) for d in days])
    day_index = np.repeat(np.arange(len(days)), counts)
    period = np.concatenate([np.arange(1, n + 1) for n in counts]).astype(np.int32)

    # Weather: a windy-spell factor per day (AR(1) in log space) times the season.
    doy = np.array([d.timetuple().tm_yday for d in days])
    season = 1.0 + 0.55 * np.cos(2 * np.pi * (doy - 15) / 365.25)
    spell = np.empty(len(days))
    level = 0.0
    for i, shock in enumerate(rng.normal(0.0, 0.45, len(days))):
        level = 0.75 * level + shock
        spell[i] = level
    windy = season * np.exp(spell - 0.5 * 0.45**2 / (1 - 0.75**2))
    diurnal = 1.0 + 0.35 * np.cos(2 * np.pi * (period - 8) / 48)  # most at night

    capacity = np.array([f.capacity_mw for f in farms])
    propensity = capacity**0.8 * rng.lognormal(0.0, 0.6, len(farms))
    propensity /= propensity.sum()
    chance = np.clip(
        (_KEYS_PER_DAY / counts.mean()) * (windy[day_index] * diurnal)[:, None] * propensity[None, :],
        0.0, 0.95,
    )
    slot, farm = np.nonzero(rng.random(chance.shape) < chance)
    extra = rng.poisson(_EXTRA_RECORDS, len(slot))
    record_slot = np.repeat(slot, 1 + extra)
    record_farm = np.repeat(farm, 1 + extra)
    n = len(record_slot)

    # Volume in MWh (half an hour at a share of capacity), split over the acceptances, 3 d.p.
    share = rng.beta(2.0, 3.0, n) / np.repeat(1 + extra, 1 + extra)
    mwh = np.round(capacity[record_farm] * 0.5 * share, 3)
    sign = np.where(rng.random(n) < 0.02, 1, -1)  # the odd positive volume: the sign is noise
    mwh[rng.random(n) < 0.01] = 0.0  # and the odd zero
    volume_units = (sign * np.rint(mwh * 1000)).astype(np.int64)
    price = np.round(-rng.gamma(2.0, 25.0, n), 2)
    price_units = np.rint(price * 100).astype(np.int64)
    payment_units = volume_units * price_units  # scale 3 + 2 = 5, exact

    day_of = np.array(days, dtype="datetime64[D]")[day_index[record_slot]]
    frame = pl.DataFrame({
        "settlement_date": day_of,
        "settlement_period": period[record_slot],
        "farm_id": np.array([f.farm_id for f in farms])[record_farm],
        "lead_party_name": np.array([f.lead_party_name for f in farms])[record_farm],
        "volume": decimals.from_units(volume_units, scale=3, precision=18),
        "payment": decimals.from_units(payment_units, scale=5, precision=18),
        "original_price": decimals.from_units(price_units, scale=2, precision=18),
        "final_price": decimals.from_units(price_units, scale=2, precision=18),
        "so_flag": rng.random(n) < 0.9,
        "cadl_flag": rng.random(n) < 0.05,
    })
    return frame.with_columns(pl.col("settlement_date").cast(pl.Date)).sort(
        "settlement_date", "settlement_period", "farm_id")


def difficulty(months: list[Month], real: dict[date, Decimal]) -> pl.DataFrame:
    """Difficulty per day: `real` where it has the date, else a curve through 2022–2025 levels
    that steps every 14 days as the network's retarget does."""
    anchors = [(date(2022, 1, 1), 24.27e12), (date(2023, 1, 1), 35.36e12),
               (date(2024, 1, 1), 72.0e12), (date(2025, 1, 1), 109.8e12),
               (date(2026, 1, 1), 148.0e12)]
    days = [d for m in months for d in m.days()]
    values = [real[d] if d in real else Decimal(round(_curve(d, anchors))) for d in days]
    return pl.DataFrame({"settlement_date": days, "difficulty": values},
                        schema={"settlement_date": pl.Date, "difficulty": pl.Decimal(38, 10)})


def _curve(day: date, anchors: list[tuple[date, float]]) -> float:
    epoch = date(2022, 1, 1) + timedelta(days=(day - date(2022, 1, 1)).days // 14 * 14)
    epoch = max(anchors[0][0], min(epoch, anchors[-1][0]))
    for (d0, v0), (d1, v1) in itertools.pairwise(anchors):
        if d0 <= epoch <= d1:
            t = (epoch - d0).days / (d1 - d0).days
            wiggle = 1.0 + 0.03 * math.sin(epoch.toordinal() / 9.0)
            return math.exp(math.log(v0) + t * (math.log(v1) - math.log(v0))) * wiggle
    raise AssertionError("unreachable")


def present_share(month: Month) -> float:
    """How much of a month's expected rows production already holds (the backlog's shape)."""
    if month.year <= 2021:
        return 1.0
    if month.year == 2022:
        return 0.8 if month.month <= 6 else 0.4
    if month.year == 2023:
        return 0.15 if month.month in (1, 2) else 0.08
    if month.year == 2024:
        return 0.55 if month.month <= 5 else 0.15
    return 0.0


def backlog(expected: pl.DataFrame, seed: int = 7, drifted: int = 40, orphans: int = 30) -> pl.DataFrame:
    """The calculations production would hold: whole days present or absent per the month's
    share, plus `drifted` rows with the fallback difficulty and `orphans` rows with no source."""
    if expected.is_empty():
        return expected
    rng = np.random.default_rng(seed)
    days = expected.select(pl.col("settlement_date").unique().sort())
    keep = days.with_columns(
        share=pl.col("settlement_date").map_elements(lambda d: present_share(Month.of(d)),
                                                     return_dtype=pl.Float64),
        draw=pl.Series(rng.random(days.height)),
    ).filter(pl.col("draw") < pl.col("share"))
    present = expected.join(keep.select("settlement_date"), on="settlement_date", how="semi")
    if present.is_empty():
        return present

    picks = rng.choice(present.height, size=min(drifted, present.height), replace=False)
    index = pl.int_range(pl.len())
    # The fallback difficulty in place of the day's, and the bitcoin scaled to match.
    stale = (pl.col("bitcoin_mined").cast(pl.Float64) * pl.col("difficulty").cast(pl.Float64)
             / FALLBACK_DIFFICULTY)
    present = present.with_columns(
        bitcoin_mined=pl.when(index.is_in(picks)).then(stale.round(8).cast(pl.Decimal(18, 8)))
        .otherwise(pl.col("bitcoin_mined")),
        difficulty=pl.when(index.is_in(picks)).then(pl.lit(Decimal(FALLBACK_DIFFICULTY), pl.Decimal(38, 10)))
        .otherwise(pl.col("difficulty")),
    )
    # Orphans: real rows moved to a period two hours later, where that farm has no record.
    sample = present.sample(n=min(orphans, present.height), seed=seed)
    moved = sample.with_columns(pl.col("settlement_period") % 40 + 5)
    moved = moved.join(expected.select("settlement_date", "settlement_period", "farm_id").unique(),
                       on=["settlement_date", "settlement_period", "farm_id"], how="anti")
    return pl.concat([present, moved]).sort("settlement_date", "settlement_period", "farm_id", "miner_model")
