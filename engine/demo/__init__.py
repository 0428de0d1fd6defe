"""`engine demo`: fill a database with realistic synthetic data and reconcile it.

It replaces all data in the engine's tables, so it runs only on the embedded server or on a
database whose tables are empty.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from engine import formula
from engine.demo import generate
from engine.errors import InputError
from engine.month import summaries
from engine.month.reconcile import MonthResult, StepCallback, reconcile_month
from engine.month.session import open_session
from engine.months import Month
from engine.reference import REFERENCE_DIR
from engine.repairs import legacy
from engine.store import db, schema
from engine.store.config import Settings, load_miner_models

log = logging.getLogger(__name__)

DEMO_TABLES = (*schema.PRODUCTION_TABLES, *(f"{{engine}}.{name}" for name in schema.ENGINE_TABLES))
_COUNT_ROWS = """SELECT (SELECT count(*) FROM curtailment_records)
                   + (SELECT count(*) FROM historical_bitcoin_calculations)"""
_TRUNCATE = f"TRUNCATE {', '.join(DEMO_TABLES)} RESTART IDENTITY"


@dataclass(frozen=True)
class DemoData:
    curtailment_records: int
    expected_rows: int
    present_rows: int
    difficulty_dates: int
    seconds: float
    # Rows the older writers damaged, per cause (`--legacy-damage`; per_record_rows counts rows).
    damage: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"curtailment_records": self.curtailment_records, "expected_rows": self.expected_rows,
                "present_rows": self.present_rows, "difficulty_dates": self.difficulty_dates,
                "damage": self.damage, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class DemoResult:
    data: DemoData
    months: list[MonthResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return max((m.exit_code for m in self.months), default=0)

    def totals(self) -> dict[str, int]:
        keys = ("expected", "present_before", "inserted", "verified")
        return {k: sum(m.rows.get(k, 0) for m in self.months) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data.to_dict(), "totals": self.totals(),
                "seconds": round(self.seconds, 3), "months": [m.to_dict() for m in self.months]}


def fill_database(url: str, months: list[Month], *, embedded: bool, seed: int = 2024,
                  legacy_damage: bool = False, engine_schema: str = schema.DEFAULT_SCHEMA) -> DemoData:
    """Generate the demo data for `months` and write it, replacing what the tables held.

    With `legacy_damage` the older writers' damage of `legacy.DEMO_DAMAGE` goes on top of the
    backlog; its duplicated keys leave the calculations table without the unique key index.
    Either way the indexes end as `engine db init` leaves them (the lookup index instead of
    the unique one where duplicates block it).
    Raises `InputError` on a non-embedded database whose tables already hold rows.
    """
    start = time.perf_counter()
    # The demo's database is the demo's: it creates the production tables and their indexes.
    schema.init_schema(url, engine_schema=engine_schema, own_database=True)
    with db.connect(url) as conn, db.translated_errors(url), conn.cursor() as cursor:
        if not embedded and db.fetch_all(cursor, _COUNT_ROWS)[0][0]:
            raise InputError("the demo replaces all data; on a database other than the embedded "
                             "one it runs only when the tables are empty")
    models = load_miner_models(REFERENCE_DIR / "miner_models.toml")
    farms = generate.load_farms(REFERENCE_DIR / "bmu_mapping.json")
    records = generate.curtailment(months, farms, seed=seed)
    real = {date.fromisoformat(d): Decimal(v) for d, v in
            json.loads((REFERENCE_DIR / "difficulty_2024.json").read_text()).items()}
    difficulty = generate.difficulty(months, real)
    expected = formula.expected_rows(records, difficulty, models)
    present = generate.backlog(expected)
    damage: dict[str, int] = {}
    if legacy_damage:
        damaged = legacy.damage(present, records, difficulty, models)
        present, damage = damaged.rows, damaged.counts
    with db.connect(url) as conn, db.translated_errors(url), conn.cursor() as cursor:
        cursor.execute(schema.sql(_TRUNCATE, engine_schema))
        if legacy_damage:
            cursor.execute(f"DROP INDEX IF EXISTS {schema.KEY_INDEX}")
        cursor.adbc_ingest("curtailment_records", records.to_arrow(), mode="append")
        cursor.adbc_ingest(schema.CALCULATIONS, present.to_arrow(), mode="append")
        # A cursor of its own: ADBC keeps a cursor's schema for its later ingests.
        with conn.cursor() as own:
            own.adbc_ingest("bitcoin_difficulty", difficulty.to_arrow(), mode="append",
                            db_schema_name=engine_schema)
        for month in months:  # production's summaries agree with the rows it holds
            summaries.refresh(cursor, month)
        conn.commit()
    with db.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("ANALYZE curtailment_records")
        cursor.execute(f"ANALYZE {schema.CALCULATIONS}")
    # As `engine db init` leaves it: the unique key index, or (duplicates block it, also after
    # an earlier damaged demo) the lookup index.
    schema.init_schema(url, engine_schema=engine_schema, own_database=True)
    return DemoData(records.height, expected.height, present.height, difficulty.height,
                    time.perf_counter() - start, damage)


def run_demo(settings: Settings, months: list[Month], *, url: str | None = None,
             legacy_damage: bool = False, on_month: Callable[[MonthResult], None] | None = None,
             on_step: StepCallback | None = None) -> DemoResult:
    """Fill the database with demo data for `months`, then reconcile each month in turn."""
    start = time.perf_counter()
    url = url or db.resolve_url(settings.database_url, settings.data_dir,
                                connect_timeout_s=settings.connect_timeout_s)
    data = fill_database(url, months, embedded=settings.database_url is None,
                         legacy_damage=legacy_damage, engine_schema=settings.schema)
    results = []
    with open_session(settings, url) as session:
        for month in months:
            result = reconcile_month(session, month, command="demo", on_step=on_step)
            results.append(result)
            if on_month:
                on_month(result)
    return DemoResult(data, results, time.perf_counter() - start)

