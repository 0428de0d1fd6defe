"""Exact decimal columns built from integer units, with no float on the way."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa


def from_units(units: np.ndarray, *, scale: int, precision: int = 18, name: str = "") -> pl.Series:
    """A Decimal(precision, scale) series whose unscaled integers are `units` (int64)."""
    units = np.ascontiguousarray(units, dtype=np.int64)
    words = np.empty((len(units), 2), dtype=np.int64)
    words[:, 0] = units
    words[:, 1] = units >> 63  # sign extension to 128 bits
    array = pa.Array.from_buffers(pa.decimal128(precision, scale), len(units),
                                  [None, pa.py_buffer(words)])
    return pl.Series(name, array)
