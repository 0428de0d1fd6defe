"""Formula v1 for one row in plain scalar Python: the independent reference the engine must match.

It imports nothing from `engine`, so it cannot drift with the code it checks. Each step is
DESIGN.md's, in its order, on Python floats; `toFixed(8)` is the double's exact binary value
rounded to 8 decimals, ties away from zero (`format(x, '.8f')` would round an exact tie such as
0.009765625 to even, which production's JavaScript did not).
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol


class Model(Protocol):
    @property
    def hashrate_th(self) -> float: ...

    @property
    def power_w(self) -> float: ...


def to_fixed_8(x: float) -> Decimal:
    """JavaScript's `x.toFixed(8)` as a Decimal: the exact binary value, ties away from zero."""
    return Decimal(x).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP)


def v1_reference(period_mwh: float, farm_mwh: float, difficulty: float, model: Model,
                 reward: float = 3.125) -> str:
    """Formula v1 for one row; returns the 8-decimal text production stored."""
    miners = math.floor(period_mwh * 1000 / (model.power_w / 1000 * 0.5))
    network_th = difficulty * 2**32 / 600 / 1e12
    period_btc = float(to_fixed_8(miners * model.hashrate_th / network_th * reward * 3))
    return f"{to_fixed_8(period_btc * farm_mwh / period_mwh):.8f}"
