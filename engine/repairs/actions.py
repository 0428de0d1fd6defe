"""Repairs of drift, duplicates and orphans: which rows change (pure), and the set-based
statements that change them inside the caller's transaction (never commits by itself).

- `--fix drift` sets drifted rows to the recomputed bitcoin and the day's difficulty;
- `--fix duplicates` keeps one copy per key (the one matching the recompute, else the newest)
  and deletes the others; with `drift` too, a kept copy that differs is updated;
- `--fix orphans` deletes the rows with no qualifying curtailment.

The actions are staged with ADBC bulk ingest; the rows are locked (`FOR UPDATE`) and their
exact before-images read as text, so `engine undo` can put back every digit; then one UPDATE
and one DELETE join the staging table by id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from engine.errors import InputError, RepairConflict, quoted
from engine.formula import KEY
from engine.month.diff import Diff
from engine.store import db
from engine.store.schema import CALCULATIONS, KEY_COLUMNS

FIXES = ("drift", "duplicates", "orphans")
STAGE = "engine_repair"
_KEY = ", ".join(KEY_COLUMNS)

#: One row per row a repair changes. `bitcoin_mined`/`difficulty` are the new values (null for
#: a delete); `old_*` what the snapshot read.
ACTIONS_SCHEMA = pl.Schema([
    ("action", pl.String()), ("kind", pl.String()), ("cause", pl.String()), ("id", pl.Int64()),
    ("settlement_date", pl.Date()), ("settlement_period", pl.Int32()), ("farm_id", pl.String()),
    ("miner_model", pl.String()), ("bitcoin_mined", pl.Decimal(18, 8)),
    ("difficulty", pl.Decimal(38, 10)), ("old_bitcoin_mined", pl.Decimal(38, 10)),
    ("old_difficulty", pl.Decimal(38, 10)),
])

CREATE_STAGE = f"""
CREATE TEMPORARY TABLE {STAGE} (
    id bigint PRIMARY KEY,
    action text NOT NULL,
    settlement_date date NOT NULL,
    settlement_period integer NOT NULL,
    farm_id text NOT NULL,
    miner_model text NOT NULL,
    bitcoin_mined numeric,
    difficulty numeric
) ON COMMIT DROP
"""
# The before-images, exactly: numeric as text keeps every digit and the scale.
LOCK_AND_READ = f"""
SELECT c.id, r.action, c.settlement_date, c.settlement_period, c.farm_id, c.miner_model,
       c.bitcoin_mined::text AS bitcoin_mined, c.difficulty::text AS difficulty, c.calculated_at,
       r.bitcoin_mined::text AS bitcoin_after, r.difficulty::text AS difficulty_after
FROM {CALCULATIONS} c JOIN {STAGE} r USING (id, {_KEY})
ORDER BY c.id FOR UPDATE OF c
"""
UPDATE = f"""
UPDATE {CALCULATIONS} c SET bitcoin_mined = r.bitcoin_mined, difficulty = r.difficulty,
    calculated_at = localtimestamp
FROM {STAGE} r WHERE c.id = r.id AND r.action = 'update'
"""
#: The updated rows at their new values.
UPDATED = f"{STAGE} WHERE action = 'update'"
DELETE = f"DELETE FROM {CALCULATIONS} c USING {STAGE} r WHERE c.id = r.id AND r.action = 'delete'"
RECORD = """
UPDATE {engine}.reconciliation_runs SET causes = $2::jsonb, repairs = $3::jsonb, summaries = $4::jsonb
WHERE id = $1
"""


def parse_fix(values: Iterable[str] | None) -> frozenset[str]:
    """`["drift", "orphans"]`, `["drift,orphans"]` or `["all"]` → the classes to repair.

    Raises `InputError` for anything else."""
    chosen = {part.strip() for value in values or () for part in value.split(",") if part.strip()}
    if "all" in chosen:
        return frozenset(FIXES)
    if unknown := chosen - set(FIXES):
        raise InputError("--fix takes drift, duplicates, orphans or all, not "
                         f"{quoted(', '.join(sorted(unknown)))}")
    return frozenset(chosen)


def plan_actions(diff: Diff, fix: frozenset[str]) -> pl.DataFrame:
    """The rows `fix` changes, as `ACTIONS_SCHEMA` sorted by id. Pure."""
    frames = []
    if "drift" in fix:
        frames.append(_actions(diff.drift, "update", "drift"))
    if "duplicates" in fix:
        copies = diff.duplicates
        frames.append(_actions(copies.filter(~pl.col("keep")), "delete", "duplicates"))
        if "drift" in fix:
            frames.append(_actions(copies.filter(pl.col("keep") & ~pl.col("matches")),
                                   "update", "duplicates"))
    if "orphans" in fix:
        frames.append(_actions(diff.orphans, "delete", "orphans"))
    frames = [f for f in frames if f.height]
    if not frames:
        return ACTIONS_SCHEMA.to_frame()
    return pl.concat(frames).sort("id")


def counts(actions: pl.DataFrame) -> dict[str, dict[str, int]]:
    """What `actions` would change, in the shape `RepairResult.to_dict()` reports changes."""
    if actions.is_empty():
        return {}
    found: dict[str, dict[str, int]] = {"updated": {}, "deleted": {}}
    for action, kind, n in actions.group_by("action", "kind").len().sort("action", "kind").iter_rows():
        found["updated" if action == "update" else "deleted"][kind] = n
    return found


def remaining(diff: Diff, fix: frozenset[str]) -> Diff:
    """What is left of `diff` once `fix` is applied: the classes not repaired, and the kept
    copies of repaired duplicates that still differ when drift is not repaired."""
    left = diff.without(fix)
    if "duplicates" in fix and "drift" not in fix:
        kept = diff.duplicates.filter(pl.col("keep") & ~pl.col("matches"))
        left = replace(left, drift=pl.concat([left.drift, kept.select(left.drift.columns)],
                                             how="vertical_relaxed"))
    return left


@dataclass(frozen=True)
class RepairResult:
    """Rows changed, per action and class; `before` holds their exact before-images and
    `applied` the actions carried out (`ACTIONS_SCHEMA`)."""

    updated: dict[str, int]
    deleted: dict[str, int]
    before: pl.DataFrame
    applied: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=ACTIONS_SCHEMA))

    @property
    def changed(self) -> int:
        return sum(self.updated.values()) + sum(self.deleted.values())

    def to_dict(self) -> dict[str, Any]:
        return {"updated": self.updated, "deleted": self.deleted}


NO_REPAIR = RepairResult({}, {}, pl.DataFrame())


def apply_actions(cursor: db.Cursor, actions: pl.DataFrame) -> RepairResult:
    """Apply `actions` (from `plan_actions`) in the caller's transaction.

    Raises `RepairConflict` when a row to change is gone or its key changed since the snapshot
    (another writer got there first; the transaction must be rolled back).
    """
    if actions.is_empty():
        return NO_REPAIR
    cursor.execute(CREATE_STAGE)
    cursor.adbc_ingest(STAGE, actions.select("id", "action", *KEY, "bitcoin_mined", "difficulty")
                       .to_arrow(), mode="append", temporary=True)
    cursor.execute(LOCK_AND_READ)
    before = pl.from_arrow(cursor.fetch_arrow_table())
    assert isinstance(before, pl.DataFrame)
    if before.height != actions.height:
        raise RepairConflict(
            f"{actions.height - before.height} of the {actions.height} row(s) to repair were "
            "deleted or re-keyed by another writer since the month was read; run it again")
    updated = db.execute(cursor, UPDATE)
    deleted = db.execute(cursor, DELETE)
    expected = actions["action"].value_counts()
    planned = dict(expected.iter_rows())
    if updated != planned.get("update", 0) or deleted != planned.get("delete", 0):
        raise RepairConflict(f"updated {updated} and deleted {deleted} row(s), planned "
                             f"{planned.get('update', 0)} and {planned.get('delete', 0)}")
    return RepairResult(_by_kind(actions, "update"), _by_kind(actions, "delete"), before, actions)


def _actions(rows: pl.DataFrame, action: str, kind: str) -> pl.DataFrame:
    new = action == "update"
    return rows.select(
        pl.lit(action).alias("action"), pl.lit(kind).alias("kind"),
        (pl.col("cause") if "cause" in rows.columns else pl.lit(None, pl.String)).alias("cause"),
        pl.col("id").cast(pl.Int64), *KEY,
        (pl.col("expected_bitcoin") if new else pl.lit(None)).alias("bitcoin_mined"),
        (pl.col("expected_difficulty") if new else pl.lit(None)).alias("difficulty"),
        pl.col("bitcoin_mined").alias("old_bitcoin_mined"), pl.col("difficulty").alias("old_difficulty"),
    ).cast(ACTIONS_SCHEMA)


def _by_kind(actions: pl.DataFrame, action: str) -> dict[str, int]:
    rows = actions.filter(pl.col("action") == action)["kind"].value_counts().sort("kind")
    return dict(rows.iter_rows())
