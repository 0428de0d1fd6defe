"""Plans: what a reconciliation of one month would change, written to one Parquet file with a
fingerprint of the month's source, so `engine apply` can refuse a plan the source outran.

The file holds one row per row to insert, update or delete (the `repair.ACTIONS_SCHEMA`
columns; inserts have no id), and in its key-value metadata under `engine_plan` the month,
the fix, the formula, the models and the fingerprint: a SHA-256 over every curtailment
record of the month (id, date, period, farm, volume) and every difficulty of its days.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from engine.errors import InputError, PlanOutdated, quoted, shown_path
from engine.formula import KEY
from engine.months import Month
from engine.repairs.actions import ACTIONS_SCHEMA
from engine.store import db
from engine.store.paths import check_input, write_atomic
from engine.store.schema import DEFAULT_SCHEMA, sql

METADATA_KEY = "engine_plan"
FORMAT = 1

# md5 per table is plenty inside a SHA-256: the point is to notice change, not to resist forgery.
SOURCE_DIGEST = """
SELECT count(*), coalesce(md5(string_agg(concat_ws('|', id, settlement_date, settlement_period,
       farm_id, volume::text), ',' ORDER BY id)), '')
FROM curtailment_records WHERE settlement_date >= $1 AND settlement_date < $2
"""
DIFFICULTY_DIGEST = """
SELECT count(*), coalesce(md5(string_agg(concat_ws('|', settlement_date, difficulty::text), ','
       ORDER BY settlement_date)), '')
FROM {engine}.bitcoin_difficulty WHERE settlement_date >= $1 AND settlement_date < $2
"""
_COMPARED = ["action", "id", *KEY, "bitcoin_mined", "difficulty"]


def fingerprint(cursor: db.Cursor, month: Month, *, engine_schema: str = DEFAULT_SCHEMA) -> str:
    """`sha256:<hex>` of the month's curtailment records and difficulties, as they are now."""
    bounds = (month.first_day, month.next_first_day)
    parts = [str(value) for statement in (SOURCE_DIGEST, sql(DIFFICULTY_DIGEST, engine_schema))
             for value in db.fetch_all(cursor, statement, bounds)[0]]
    return "sha256:" + hashlib.sha256("/".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class RepairPlan:
    """A month's planned changes. `rows` has `ACTIONS_SCHEMA`; `to_dict()` is the summary
    `engine plan --json` prints."""

    month: Month
    fix: tuple[str, ...]
    formula: str
    fingerprint: str
    rows: pl.DataFrame
    models: tuple[str, ...] = ()
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per action and class: {"insert": {"missing": n}, "delete": {...}, ...}."""
        counts: dict[str, dict[str, int]] = {"insert": {}, "update": {}, "delete": {}}
        for action, kind, n in self.rows.group_by("action", "kind").len().sort("action", "kind").iter_rows():
            counts[action][kind] = n
        return counts

    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "month": str(self.month), "fix": list(self.fix),
                "formula": self.formula, "fingerprint": self.fingerprint,
                "models": list(self.models), "created_at": self.created_at}

    def to_dict(self) -> dict[str, Any]:
        return {**self.metadata(), "rows": self.rows.height, "counts": self.counts()}

    def difference(self, rows: pl.DataFrame) -> str | None:
        """How `rows` (the actions computed now) differ from the plan's, or None if they do not."""
        planned, now = (frame.select(_COMPARED).sort(_COMPARED, nulls_last=True)
                        for frame in (self.rows, rows))
        if planned.equals(now):
            return None
        only_plan = planned.join(now, on=_COMPARED, how="anti", nulls_equal=True).height
        only_now = now.join(planned, on=_COMPARED, how="anti", nulls_equal=True).height
        return (f"{only_plan} planned change(s) no longer apply and {only_now} new one(s) are "
                "needed")


def build(month: Month, fix: frozenset[str], formula: str, fingerprint: str,
          missing: pl.DataFrame, actions: pl.DataFrame, models: tuple[str, ...] = ()) -> RepairPlan:
    """The plan of inserting `missing` (expected-rows schema) and applying `actions`. Pure."""
    inserts = missing.select(
        pl.lit("insert").alias("action"), pl.lit("missing").alias("kind"),
        pl.lit(None, pl.String).alias("cause"), pl.lit(None, pl.Int64).alias("id"), *KEY,
        "bitcoin_mined", "difficulty",
        pl.lit(None).alias("old_bitcoin_mined"), pl.lit(None).alias("old_difficulty"),
    ).cast(ACTIONS_SCHEMA)
    rows = pl.concat([inserts, actions.select(ACTIONS_SCHEMA.names()).cast(ACTIONS_SCHEMA)])
    return RepairPlan(month, tuple(sorted(fix)), formula, fingerprint, rows, models)


def write(plan: RepairPlan, path: Path) -> Path:
    """Write the plan to `path` (a Parquet file; its folder must exist) through a temporary
    file, so a failed write leaves `path` as it was. Raises `InputError` for a directory, a
    special file (a device, a FIFO) or a missing folder, `EnvironmentProblem` for a full or
    read-only disk."""
    table = plan.rows.to_arrow()
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(plan.metadata())})
    return write_atomic(path, lambda temporary: pq.write_table(table, temporary))


def read(path: Path) -> RepairPlan:
    """Read a plan written by `write`. Raises `InputError` for anything else (a special file
    is refused before it is opened)."""
    check_input(path, "plan file")
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise InputError(f"{shown_path(path)} is not a plan file: {reason}") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise InputError(f"{shown_path(path)} is not a plan file (no {METADATA_KEY} metadata); make one with "
                         "`engine plan`")
    meta = _metadata(path, raw)
    rows = pl.from_arrow(table)
    assert isinstance(rows, pl.DataFrame)
    if set(rows.columns) != set(ACTIONS_SCHEMA.names()):
        raise InputError(f"{shown_path(path)} does not have the columns of a plan")
    try:
        rows = rows.select(ACTIONS_SCHEMA.names()).cast(ACTIONS_SCHEMA)
    except pl.exceptions.PolarsError:
        raise InputError(f"{shown_path(path)} has columns of the wrong types for a plan") from None
    try:
        month = Month.parse(meta["month"])
    except InputError as error:
        raise InputError(f"{shown_path(path)}: the plan's {error}") from None
    return RepairPlan(month, tuple(meta["fix"]), meta["formula"], meta["fingerprint"], rows,
                      tuple(meta["models"]), meta["created_at"])


_JSON_NAMES: dict[type, str] = {str: "a string", list: "a list", int: "a number",
                                float: "a number", bool: "true or false", dict: "an object"}
#: The plan metadata's keys and the JSON type each must have.
_META_TYPES: dict[str, type] = {"month": str, "fix": list, "formula": str, "fingerprint": str,
                                "created_at": str}


def _metadata(path: Path, raw: bytes) -> dict[str, Any]:
    """The plan's metadata, checked key by key. Raises `InputError` naming what is wrong."""
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise InputError(f"{shown_path(path)} has plan metadata that is not valid JSON; "
                         "make a new plan") from None
    if not isinstance(meta, dict):
        raise InputError(f"{shown_path(path)} has plan metadata that is not a JSON object; "
                         "make a new plan")
    if meta.get("format") != FORMAT:
        raise InputError(f"{shown_path(path)} is a plan of format {quoted(meta.get('format'), 20)}; "
                         f"this engine reads {FORMAT}")
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind):
            problem = ("lacks" if key not in meta
                       else f"has {quoted(meta[key], 20)} ({_JSON_NAMES.get(type(meta[key]), 'null')}) as")
            raise InputError(f"{shown_path(path)} {problem} its {key!r}, which must be "
                             f"{_JSON_NAMES[kind]}; make a new plan")
    meta.setdefault("models", [])
    for key in ("fix", "models"):
        if not isinstance(meta[key], list) or not all(isinstance(v, str) for v in meta[key]):
            raise InputError(f"{shown_path(path)} has a {key!r} that is not a list of names; make a new plan")
    return meta


def check_fingerprint(cursor: db.Cursor, plan: RepairPlan, *,
                      engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Raise `PlanOutdated` unless the month's source still has the plan's fingerprint."""
    if (now := fingerprint(cursor, plan.month, engine_schema=engine_schema)) != plan.fingerprint:
        raise PlanOutdated(f"the source of {plan.month} changed since the plan was made "
                           f"({plan.fingerprint[:19]}… then, {now[:19]}… now); make a new plan")
