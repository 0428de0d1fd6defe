"""A month extracted, recomputed and diffed: whole, or in slices of days that fit the memory
budget (`engine.month.slices`). Writes the Parquet files under `data/`, nothing to the
database.

A month examined in slices keeps in memory only what is small: the fingerprints, the drift,
orphans and duplicates (with their causes), the counts, and the row hashes of the rows a repair
may touch. Its missing rows stay in the Parquet parts they were written to (`Missing`), from
which the write transaction streams them into its stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import polars as pl

from engine import formula
from engine.errors import InputError, quoted
from engine.month import diff, extract, slices
from engine.months import Days, Month
from engine.repairs import causes
from engine.store import db
from engine.store.config import MinerModel
from engine.store.paths import Layout, prune_parts, write_parquet

log = logging.getLogger(__name__)

#: Times a step: `with steps("extract"): …` (the orchestrator's `_Steps`).
Steps = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True)
class Missing:
    """The month's missing rows (expected-rows schema): `frame` for a month examined whole,
    else only in the Parquet `files`, one per slice."""

    frame: pl.DataFrame | None
    files: tuple[Path, ...]
    rows: int
    days: tuple[date, ...]  # the days that have missing rows

    def chunks(self) -> Iterator[pl.DataFrame]:
        """The rows, one slice at a time."""
        if self.frame is not None:
            yield self.frame
            return
        for path in self.files:
            yield pl.read_parquet(path)

    def frames(self) -> pl.DataFrame | list[Path]:
        """What verification reads: the frame, or the files."""
        return self.frame if self.frame is not None else list(self.files)


@dataclass(frozen=True)
class Examined:
    """A month extracted, recomputed and diffed (drift and duplicates with their causes).

    `diff.missing` holds the rows only for a month examined whole; `missing` has them either
    way. `snapshot` is the month's (for a month in slices: its fingerprints, files and the
    row hashes of the rows a repair may touch, with empty frames)."""

    snapshot: extract.Snapshot
    diff: diff.Diff
    missing: Missing
    files: dict[str, str]  # the first part of the expected rows' and each class's Parquet
    slices: tuple[Days, ...]


def examine(session_url: str, read_url: str, layout: Layout, month: Month, version: str,
            models: tuple[MinerModel, ...], steps: Steps, *, engine_schema: str,
            snapshot: extract.Snapshot | None = None, days: tuple[Days, ...] = ()) -> Examined:
    """Extract `month` (unless its `snapshot` is given), recompute it with formula `version` and
    diff it, in the slices `days` (none: whole); write the expected rows and each class under
    `data/`. Raises `InputError` for an unknown formula, `SourceDataError` for bad source rows
    or missing difficulty."""
    if version not in formula.FORMULAS:
        raise InputError(f"formula {quoted(version)} is not one of {', '.join(formula.FORMULAS)}")
    if len(days) > 1:
        log.info("%s: %s to stay within the memory budget", month, slices.describe(list(days)))
    spans = days or (Days.of(month),)
    parts = []
    with db.translated_errors(session_url):
        for part, span in enumerate(spans):
            if snapshot is None or part:
                with steps("extract"):
                    snapshot = extract.extract_month(
                        read_url, month, layout, engine_schema=engine_schema,
                        days=span if len(spans) > 1 else None, part=part)
            examined = _examine_part(snapshot, layout, version, models, steps, part)
            parts.append(_let_go(examined) if len(spans) > 1 else examined)
    for first in (*parts[0].snapshot.files.values(), *(Path(f) for f in parts[0].files.values())):
        prune_parts(first, len(parts))
    if len(parts) == 1:
        examined = parts[0]
        return replace(examined, missing=replace(examined.missing, frame=examined.diff.missing))
    return _combine(parts)


def _examine_part(snapshot: extract.Snapshot, layout: Layout, version: str,
                  models: tuple[MinerModel, ...], steps: Steps, part: int) -> Examined:
    month = snapshot.month
    with steps("recompute"):
        expected = formula.expected_rows(snapshot.curtailment, snapshot.difficulty, models, version)
        tolerance = formula.one_miner_btc(snapshot.difficulty, models, version)
        files = {"expected": str(write_parquet(expected, layout.expected(month, part)))}
    with steps("diff"):
        found = find_differences(snapshot, expected, tolerance, models, version)
        for kind, frame in found.frames().items():
            files[f"diff_{kind}"] = str(write_parquet(frame, layout.diff(kind, month, part)))
    missing = Missing(None, (Path(files["diff_missing"]),), found.missing.height,
                      tuple(found.missing["settlement_date"].unique().sort()))
    return Examined(snapshot, found, missing, files, (snapshot.days,))


def _let_go(part: Examined) -> Examined:
    """A slice's examination with only what the month keeps of it: no source or expected
    frames, no missing rows (they are in its Parquet part), the row hashes of the rows a
    repair may touch only."""
    found, snapshot = part.diff, part.snapshot
    touchable = pl.concat([found.drift.select("id"), found.orphans.select("id"),
                           found.duplicates.select("id")])["id"]
    kept = replace(snapshot, curtailment=snapshot.curtailment.clear(),
                   calculations=snapshot.calculations.clear(),
                   difficulty=snapshot.difficulty.clear(),
                   calculation_hashes=snapshot.calculation_hashes.filter(
                       pl.col("id").is_in(touchable.implode())))
    return replace(part, snapshot=kept, diff=replace(found, missing=found.missing.clear()))


def _combine(parts: list[Examined]) -> Examined:
    """One month's examination from its slices' (`_let_go`)."""
    first = parts[0]
    found = diff.Diff(
        missing=first.diff.missing,
        **{kind: pl.concat([p.diff.frames()[kind] for p in parts], how="diagonal_relaxed")
           for kind in ("drift", "orphans", "duplicates")},
        expected=sum(p.diff.expected for p in parts), present=sum(p.diff.present for p in parts))
    snapshot = replace(first.snapshot, days=Days.of(first.snapshot.month),
                       prints={k: v for p in parts for k, v in p.snapshot.prints.items()},
                       calculation_hashes=pl.concat([p.snapshot.calculation_hashes for p in parts]))
    missing = Missing(None, tuple(f for p in parts for f in p.missing.files),
                      sum(p.missing.rows for p in parts),
                      tuple(d for p in parts for d in p.missing.days))
    return Examined(snapshot, found, missing, first.files,
                    tuple(p.snapshot.days for p in parts))


def find_differences(snapshot: extract.Snapshot, expected: pl.DataFrame, tolerance: pl.DataFrame,
                     models: tuple[MinerModel, ...], version: str) -> diff.Diff:
    """The snapshot's diff against the expected rows, its drift and duplicates with causes."""
    found = diff.compare(expected, snapshot.calculations, tolerance, snapshot.curtailment)
    return causes.explain(found, snapshot.curtailment, models, version)
