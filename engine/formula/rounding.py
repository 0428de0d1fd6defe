"""JavaScript's `toFixed(8)` on float64 arrays: the rounding every formula version uses.

`toFixed(8)` rounds the exact binary value of the double to 8 decimals, ties away from zero.
Equal splits make values whose decimal form ends in 5 at the 9th place; the bits of the double
decide which way they go, so neither `round(x * 1e8) / 1e8` nor a decimal cast will do.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import numpy as np


def round8(x: np.ndarray) -> np.ndarray:
    """JavaScript's `Number(x.toFixed(8))`, element-wise, as float64; NaN where `x` is not
    finite (a row that lacks an input stays NaN instead of raising)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    finite = np.isfinite(x)
    out[finite] = round8_units(x[finite]) / 1e8
    return out


def round8_units(x: np.ndarray) -> np.ndarray:
    """The integer n with n / 1e8 == x.toFixed(8): the exact binary value of each double
    rounded to 8 decimals, ties away from zero. Returned as int64. Raises ValueError for an
    element that is not finite.

    `x * 1e8` is off by at most half an ulp, which decides the rounding only next to a tie;
    those few elements (and any beyond 2**52) are settled exactly with `Decimal`. A value that
    `round8` returned comes back as its own units (it is nowhere near a tie).
    """
    x = np.asarray(x, dtype=np.float64)
    scaled = x * 1e8
    floor = np.floor(scaled)
    fraction = scaled - floor
    units = floor + (fraction >= 0.5)
    unsure = (np.abs(fraction - 0.5) <= 2 * np.spacing(np.abs(scaled))) | ~(np.abs(scaled) < 2.0**52)
    for i in np.flatnonzero(unsure):
        units[i] = round8_units_exact(float(x[i]))
    return units.astype(np.int64)


def round8_units_exact(x: float) -> int:
    """Scalar, exact `toFixed(8)` as integer units of 1e-8. Raises ValueError if not finite."""
    if not math.isfinite(x):
        raise ValueError(f"cannot round {x} to 8 decimals")
    return int(Decimal(x).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP).scaleb(8))


__all__ = ["round8", "round8_units", "round8_units_exact"]
