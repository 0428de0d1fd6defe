"""Step 3, diff: expected rows against the rows the table holds. Pure: frames in, frames out.

Keyed on (settlement_date, settlement_period, farm_id, miner_model):
- missing:    expected, absent;
- drift:      present, but bitcoin differs by more than the tolerance or difficulty differs;
- orphans:    present, with no expected row (no qualifying curtailment, or an unknown model);
- duplicates: every row of a key that is present more than once.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from engine.formula import KEY

KINDS = ("missing", "drift", "orphans", "duplicates")


@dataclass(frozen=True)
class Diff:
    missing: pl.DataFrame
    drift: pl.DataFrame
    orphans: pl.DataFrame
    duplicates: pl.DataFrame
    expected: int
    present: int  # expected keys that are present, each counted once

    def frames(self) -> dict[str, pl.DataFrame]:
        return {kind: getattr(self, kind) for kind in KINDS}

    def counts(self) -> dict[str, int]:
        return {"expected": self.expected, "present": self.present,
                **{kind: frame.height for kind, frame in self.frames().items()}}


def compare(expected: pl.DataFrame, existing: pl.DataFrame, tolerance: pl.DataFrame) -> Diff:
    """Classify every expected and existing row.

    `expected` has the key, bitcoin_mined and difficulty; `existing` the same plus the table's
    other columns; `tolerance` has settlement_date, miner_model and tolerance (BTC).
    """
    existing = existing.with_columns(pl.col("settlement_period").cast(pl.Int32))
    present_keys = existing.select(KEY).unique()
    missing = expected.join(present_keys, on=KEY, how="anti")
    orphans = existing.join(expected.select(KEY), on=KEY, how="anti")
    order = [*KEY, "id"] if "id" in existing.columns else KEY
    duplicates = existing.filter(pl.len().over(KEY) > 1).sort(order)
    drift = (
        existing.join(
            expected.select(KEY, expected_bitcoin="bitcoin_mined", expected_difficulty="difficulty"),
            on=KEY,
        )
        .join(tolerance, on=["settlement_date", "miner_model"], how="left")
        .with_columns(
            delta=pl.col("bitcoin_mined").cast(pl.Float64) - pl.col("expected_bitcoin").cast(pl.Float64)
        )
        .filter(
            (pl.col("delta").abs() > pl.col("tolerance").fill_null(0.0))
            | (pl.col("difficulty") != pl.col("expected_difficulty"))
        )
        .sort(KEY)
    )
    return Diff(
        missing=missing,
        drift=drift,
        orphans=orphans.sort(KEY),
        duplicates=duplicates,
        expected=expected.height,
        present=expected.height - missing.height,
    )
