"""Formula v1's arithmetic, written once: float64 NumPy arrays in, every step out.

Everything that computes bitcoin calls this: the registered formula versions, the models of
the older writers (`engine.repairs.legacy`: their variants are parameters here, not copies),
the causes of drift and the step-by-step explanation of one row. The steps are DESIGN.md's,
in its order::

    miners     = floor(period_mwh * 1000 / (W / 1000 * 0.5))
    network_th = difficulty * 2**32 / 600 / 1e12
    period_btc = round8(miners * TH / network_th * reward * 3)
    farm_btc   = round8(period_btc * farm_mwh / period_mwh)

Every step is IEEE float64 through NumPy: Polars divides a column by a constant through its
reciprocal, off in the last bit often enough to flip floors and ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.formula.rounding import round8

#: Bitcoin per block since the fourth halving (what production's v1 used on every date).
BLOCK_REWARD = 3.125
BLOCKS_PER_PERIOD = 3

Floats = np.ndarray | float


@dataclass(frozen=True)
class Steps:
    """Each step of the formula for each row (float64 arrays; NaN where a row lacks an input)."""

    miners: np.ndarray
    network_th: np.ndarray
    period_btc: np.ndarray
    farm_btc: np.ndarray


def v1(farm_mwh: Floats, period_mwh: Floats | None, difficulty: Floats, power_w: Floats,
       hashrate_th: Floats, reward: Floats = BLOCK_REWARD, *, floor: bool = True,
       rounded: bool = True) -> Steps:
    """Formula v1 for each row, with the variants older writers used as parameters.

    `period_mwh` is the period's pooled Σ|volume|; None computes each farm on its own volume
    (the per-farm writer, or one record alone). `reward` is BTC per block, one number or one
    per row (a version's reward schedule). `floor=False` keeps fractional miners and
    `rounded=False` skips both `toFixed(8)` roundings, as the unrounded writers did.

    Example: 10 MWh of a period of 20 MWh at difficulty 1e14, 3050 W and 100 TH/s:
    miners 13114, network_th 715827882.6666666, period_btc 0.01717504, farm_btc 0.00858752.
    """
    pooled = farm_mwh if period_mwh is None else period_mwh
    with np.errstate(invalid="ignore", divide="ignore"):
        count = miners(pooled, power_w, floor=floor)
        network_th = network_terahash(difficulty)
        period = period_btc(count, hashrate_th, network_th, reward, rounded=rounded)
        farm = farm_btc(period, farm_mwh, pooled, rounded=rounded)
    return Steps(np.asarray(count), np.asarray(network_th), period, farm)


def miners(period_mwh: Floats, power_w: Floats, *, floor: bool = True) -> np.ndarray:
    """How many miners the period's energy runs for half an hour (whole ones with `floor`)."""
    count = np.asarray(period_mwh, dtype=np.float64) * 1000.0 / (np.asarray(power_w) / 1000.0 * 0.5)
    return np.floor(count) if floor else count


def network_terahash(difficulty: Floats) -> np.ndarray:
    """The network's hash rate in TH/s implied by the difficulty (a block every 600 s)."""
    return np.asarray(difficulty, dtype=np.float64) * 2.0**32 / 600.0 / 1e12


def period_btc(miners: Floats, hashrate_th: Floats, network_th: Floats, reward: Floats, *,
               rounded: bool = True) -> np.ndarray:
    """The bitcoin `miners` earn in one period: their share of the network's hash rate times
    the period's blocks. With `miners` = 1 and `rounded=False`, one miner's bitcoin."""
    btc = np.asarray(miners, dtype=np.float64) * hashrate_th / network_th * reward * BLOCKS_PER_PERIOD
    return round8(btc) if rounded else np.asarray(btc)


def farm_btc(period_btc: Floats, farm_mwh: Floats, period_mwh: Floats, *,
             rounded: bool = True) -> np.ndarray:
    """The farm's share of its period's bitcoin, by energy."""
    btc = np.asarray(period_btc, dtype=np.float64) * farm_mwh / period_mwh
    return round8(btc) if rounded else np.asarray(btc)


__all__ = ["BLOCKS_PER_PERIOD", "BLOCK_REWARD", "Floats", "Steps", "farm_btc", "miners", "network_terahash",
           "period_btc", "v1"]
