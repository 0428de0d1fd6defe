"""Step 3, diff: expected rows against the rows the table holds. Pure: frames in, frames out.

Keyed on (settlement_date, settlement_period, farm_id, miner_model). Every expected key is
present or `missing`; every existing row is in exactly one of:
- correct:    its key is expected, present once, and its values agree;
- drift:      its key is expected and present once, but bitcoin differs by more than the
              tolerance or the stored difficulty is not the day's;
- orphans:    its key is not expected (no qualifying curtailment, or an unknown model),
              however many times it is present;
- duplicates: its key is expected and present more than once (every copy is listed;
              `matches` says whether it agrees with the recompute, `keep` marks the one a
              repair keeps: the newest matching copy, else the newest).

The tolerance of a row is one miner's worth at the day's difficulty times the farm's share of
the period, plus two rounding units: summing |volume| in another order can move the period's
`miners` by one, which moves each farm's bitcoin by its share of one miner, and each of the two
`round8` steps by at most 1e-8. Anything further is drift (the per-farm variant of the formula
differs by less than one whole miner, so an unshared tolerance would hide it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from engine.formula import KEY, SOURCE_KEY, pooled_periods

KINDS = ("missing", "drift", "orphans", "duplicates")
#: Two rounding steps of 1e-8 each: how far two correct computations can differ besides `miners`.
ROUNDING = 2e-8


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
        # Missing is counted from the keys, not the frame: a month examined in slices keeps
        # its missing rows on disk (`engine.month.examine.Missing`), not here.
        return {"expected": self.expected, "present": self.present,
                **{kind: frame.height for kind, frame in self.frames().items()},
                "missing": self.expected - self.present}

    @property
    def differs(self) -> bool:
        """Whether anything at all differs from what the source implies."""
        return any(count for kind, count in self.counts().items() if kind in KINDS)

    def without(self, kinds: set[str] | frozenset[str]) -> Diff:
        """The same diff with the `kinds` emptied (what is left once they are repaired)."""
        return replace(self, **{kind: getattr(self, kind).clear() for kind in kinds})


def compare(expected: pl.DataFrame, existing: pl.DataFrame, tolerance: pl.DataFrame,
            curtailment: pl.DataFrame | None = None) -> Diff:
    """Classify every expected and existing row.

    `expected` has the key, bitcoin_mined and difficulty; `existing` the same plus the table's
    other columns (`id` and `calculated_at` decide which duplicate is the newest); `tolerance`
    has settlement_date, miner_model and tolerance (one miner's BTC). With the month's
    `curtailment` the tolerance is scaled by each farm's share of its period; without it, by 1.
    """
    existing = existing.with_columns(pl.col("settlement_period").cast(pl.Int32))
    targets = expected.select(KEY, expected_bitcoin="bitcoin_mined",
                              expected_difficulty="difficulty")
    joined = existing.join(targets, on=KEY, how="left").with_columns(
        _copies=pl.len().over(KEY),
        delta=pl.col("bitcoin_mined").cast(pl.Float64) - pl.col("expected_bitcoin").cast(pl.Float64),
    )
    known = pl.col("expected_bitcoin").is_not_null()
    orphans = joined.filter(~known).drop("expected_bitcoin", "expected_difficulty", "delta", "_copies")
    # Only rows that differ at all need their tolerance: the few drift candidates and copies.
    loose = (pl.col("delta").abs() > ROUNDING) | (pl.col("difficulty") != pl.col("expected_difficulty"))
    suspects = joined.filter(known & ((pl.col("_copies") > 1) | loose))
    suspects = _with_tolerance(suspects, tolerance, curtailment).with_columns(
        matches=(pl.col("delta").abs() <= pl.col("tolerance"))
        & (pl.col("difficulty") == pl.col("expected_difficulty"))
    )
    drift = suspects.filter((pl.col("_copies") == 1) & ~pl.col("matches")).drop("_copies", "matches")
    duplicates = _mark_keeper(suspects.filter(pl.col("_copies") > 1)).drop("_copies")
    missing = expected.join(existing.select(KEY), on=KEY, how="anti")
    return Diff(
        missing=missing,
        drift=drift.sort(KEY),
        orphans=orphans.sort(_order(orphans)),
        duplicates=duplicates,
        expected=expected.height,
        present=expected.height - missing.height,
    )


def farm_shares(curtailment: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """Each (date, period, farm) of `keys` with its share of the period's Σ|volume| (0 to 1).

    Only the periods of `keys` are summed, so this stays cheap for a handful of rows.
    """
    periods = keys.select(SOURCE_KEY[:2]).unique()
    source = curtailment.with_columns(pl.col("settlement_period").cast(pl.Int32)).join(
        periods, on=SOURCE_KEY[:2], how="semi")
    pooled = pooled_periods(source)
    return pooled.select(
        *SOURCE_KEY,
        share=pl.col("farm_volume").cast(pl.Float64) / pl.col("period_volume").cast(pl.Float64),
    )


def _with_tolerance(rows: pl.DataFrame, tolerance: pl.DataFrame,
                    curtailment: pl.DataFrame | None) -> pl.DataFrame:
    rows = rows.join(tolerance.rename({"tolerance": "_one_miner"}),
                     on=["settlement_date", "miner_model"], how="left")
    if curtailment is not None and rows.height:
        rows = rows.join(farm_shares(curtailment, rows), on=SOURCE_KEY, how="left")
    else:
        rows = rows.with_columns(share=pl.lit(1.0))
    return rows.with_columns(
        tolerance=pl.col("_one_miner").fill_null(0.0) * pl.col("share").fill_null(1.0) + ROUNDING
    ).drop("_one_miner", "share")


def _mark_keeper(copies: pl.DataFrame) -> pl.DataFrame:
    """Add `keep`: per key, the copy that matches the recompute, else the newest one."""
    newest = [c for c in ("calculated_at", "id") if c in copies.columns]
    ranked = copies.sort([*KEY, "matches", *newest],
                         descending=[False] * len(KEY) + [True] * (1 + len(newest)), nulls_last=True)
    ranked = ranked.with_columns(keep=pl.int_range(pl.len()).over(KEY) == 0)
    return ranked.sort(_order(ranked))


def _order(frame: pl.DataFrame) -> list[str]:
    return [*KEY, "id"] if "id" in frame.columns else KEY
