"""Drill from one calculation row to the curtailment records behind it and recompute it step
by step with formula v1, as a notebook shows it.

The steps are DESIGN.md's, in its order, each one `engine.formula.kernel`'s own step function
on this row's numbers (pooled with `formula.pooled_periods`); the result is checked against
`kernel.v1` called on the row and against the vectorised `formula.expected_rows` on its
period, so a step shown here can never silently disagree with what the engine writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import polars as pl

from engine import formula
from engine.errors import InputError, MissingDifficulty
from engine.formula import kernel
from engine.store import db
from engine.store.config import MinerModel
from engine.store.schema import DEFAULT_SCHEMA, sql

PERIOD_RECORDS = """
SELECT id, settlement_date, settlement_period, farm_id, lead_party_name, volume::text AS volume
FROM curtailment_records WHERE settlement_date = $1 AND settlement_period = $2
ORDER BY farm_id, id
"""
DIFFICULTY = "SELECT difficulty::text FROM {engine}.bitcoin_difficulty WHERE settlement_date = $1"
STORED = """
SELECT id, bitcoin_mined::text, difficulty::text, calculated_at FROM historical_bitcoin_calculations
WHERE settlement_date = $1 AND settlement_period = $2 AND farm_id = $3 AND miner_model = $4
ORDER BY id
"""


@dataclass(frozen=True)
class RowExplanation:
    """One (date, period, farm, model) recomputed from its curtailment records.

    `records` are the farm's records in the period (id, lead_party_name, volume);
    `period_farms` every farm curtailing in that period (farm_id, farm_mwh, share);
    `stored` what the calculations table holds for the key now (one value per copy, none
    when the row is missing). `farm_btc` is the step-by-step result, `kernel` that of
    `formula.kernel.v1` called on the row, `vectorised` that of `formula.expected_rows`.
    """

    settlement_date: date
    settlement_period: int
    farm_id: str
    model: MinerModel
    records: pl.DataFrame
    period_farms: pl.DataFrame
    farm_mwh: float
    period_mwh: float
    difficulty: Decimal
    miners: int
    network_th: float
    period_btc: float
    farm_share: float
    farm_btc: str
    kernel: str
    vectorised: str
    stored: tuple[str, ...]

    @property
    def agrees(self) -> bool:
        """Whether the steps, the kernel on the row and the vectorised formula give one value."""
        return self.farm_btc == self.kernel == self.vectorised

    @property
    def status(self) -> str:
        """`missing` (no stored row), `present` (one, equal to the recompute), `differs`
        (one, another value) or `duplicated` (more than one copy)."""
        if not self.stored:
            return "missing"
        if len(self.stored) > 1:
            return "duplicated"
        return "present" if Decimal(self.stored[0]) == Decimal(self.farm_btc) else "differs"

    def steps(self) -> pl.DataFrame:
        """The recompute as a small table: step, formula, value (text, as computed)."""
        m = self.model
        rows = [
            ("farm MWh", f"Σ|volume| of the farm's {self.records.height} record(s)", f"{self.farm_mwh!r}"),
            ("period MWh", f"Σ farm MWh over {self.period_farms.height} farm(s)", f"{self.period_mwh!r}"),
            ("miners", f"floor(period MWh × 1000 / ({m.power_w:g} W / 1000 × 0.5))", str(self.miners)),
            ("network TH/s", f"difficulty {self.difficulty:f} × 2^32 / 600 / 1e12", f"{self.network_th!r}"),
            ("period BTC", f"round8(miners × {m.hashrate_th:g} TH/s / network TH/s × "
                           f"{kernel.BLOCK_REWARD} × {kernel.BLOCKS_PER_PERIOD})",
             f"{self.period_btc:.8f}"),
            ("farm share", "farm MWh / period MWh", f"{self.farm_share!r}"),
            ("farm BTC", "round8(period BTC × farm MWh / period MWh)", self.farm_btc),
            ("kernel", "formula.kernel.v1 (this row)", self.kernel),
            ("expected_rows", "formula.expected_rows (vectorised)", self.vectorised),
            ("stored", f"{len(self.stored)} row(s) in the table", ", ".join(self.stored) or "none"),
        ]
        return pl.DataFrame(rows, schema=["step", "formula", "value"], orient="row")

    def to_dict(self) -> dict[str, Any]:
        return {
            "settlement_date": self.settlement_date.isoformat(),
            "settlement_period": self.settlement_period, "farm_id": self.farm_id,
            "miner_model": self.model.name, "records": self.records.height,
            "farms_in_period": self.period_farms.height, "farm_mwh": self.farm_mwh,
            "period_mwh": self.period_mwh, "difficulty": str(self.difficulty),
            "miners": self.miners, "network_th": self.network_th, "period_btc": self.period_btc,
            "farm_share": self.farm_share, "farm_btc": self.farm_btc, "kernel": self.kernel,
            "vectorised": self.vectorised, "stored": list(self.stored), "status": self.status,
            "agrees": self.agrees,
        }


def explain(url: str, models: Sequence[MinerModel], settlement_date: date, settlement_period: int,
            farm_id: str, miner_model: str, *, lock_timeout_ms: int = 5_000,
            statement_timeout_ms: int = 300_000, engine_schema: str = DEFAULT_SCHEMA) -> RowExplanation:
    """Read the key's period (every farm's records), its day's difficulty and its stored rows
    from the database in one read-only transaction, and recompute the row step by step with
    formula v1.

    Raises `InputError` for an unknown model or a key with no qualifying curtailment (its
    Σ|volume| is 0 or it has no record), `MissingDifficulty` when the day has no difficulty.
    """
    model = next((m for m in models if m.name == miner_model), None)
    if model is None:
        raise InputError(f"unknown miner model {miner_model!r}; known: "
                         f"{', '.join(m.name for m in models)}")
    with db.translated_errors(url), db.connect(url) as conn, db.transaction(
            conn, lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms) as cursor:
        source = _records(db.fetch_all(cursor, PERIOD_RECORDS, (settlement_date, settlement_period)))
        difficulty = db.fetch_all(cursor, sql(DIFFICULTY, engine_schema), (settlement_date,))
        stored = db.fetch_all(cursor, STORED, (settlement_date, settlement_period, farm_id, miner_model))
    pooled = formula.pooled_periods(source)
    farm = pooled.filter(pl.col("farm_id") == farm_id)
    if farm.is_empty():
        raise InputError(f"{settlement_date} period {settlement_period} farm {farm_id} has no "
                         "qualifying curtailment: no calculation row is expected for it")
    if not difficulty:
        raise MissingDifficulty([settlement_date])
    day_difficulty = Decimal(difficulty[0][0])

    # The same float64 conversions the formula makes: exact decimal sums, converted once.
    farm_mwh = farm["farm_volume"].cast(pl.Float64).item()
    period_mwh = farm["period_volume"].cast(pl.Float64).item()
    difficulty_f = pl.Series([day_difficulty], dtype=pl.Decimal(38, 10)).cast(pl.Float64).item()
    # One kernel step at a time, as the table shows them; `kernel.v1` below composes them.
    miners = int(kernel.miners(period_mwh, model.power_w))
    network_th = float(kernel.network_terahash(difficulty_f))
    period_btc = float(kernel.period_btc(miners, model.hashrate_th, network_th, kernel.BLOCK_REWARD))
    farm_btc = float(kernel.farm_btc(period_btc, farm_mwh, period_mwh))
    whole = kernel.v1(farm_mwh, period_mwh, difficulty_f, model.power_w, model.hashrate_th).farm_btc

    difficulty_frame = pl.DataFrame({"settlement_date": [settlement_date], "difficulty": [day_difficulty]},
                                    schema={"settlement_date": pl.Date, "difficulty": pl.Decimal(38, 10)})
    vectorised = formula.expected_rows(source, difficulty_frame, [model]).filter(
        pl.col("farm_id") == farm_id)["bitcoin_mined"].item()
    return RowExplanation(
        settlement_date=settlement_date, settlement_period=settlement_period, farm_id=farm_id,
        model=model,
        records=source.filter(pl.col("farm_id") == farm_id).select("id", "lead_party_name", "volume"),
        period_farms=pooled.select("farm_id", farm_mwh=pl.col("farm_volume").cast(pl.Float64),
                                   share=pl.col("farm_volume").cast(pl.Float64)
                                   / pl.col("period_volume").cast(pl.Float64)),
        farm_mwh=farm_mwh, period_mwh=period_mwh, difficulty=day_difficulty, miners=miners,
        network_th=network_th, period_btc=period_btc, farm_share=farm_mwh / period_mwh,
        farm_btc=f"{farm_btc:.8f}", kernel=f"{float(whole):.8f}",
        vectorised=f"{vectorised:.8f}",
        stored=tuple(_bitcoin_text(row[1]) for row in stored),
    )


def _records(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(r[0], r[1], r[2], r[3], r[4], Decimal(r[5])) for r in rows],
        schema={"id": pl.Int32, "settlement_date": pl.Date, "settlement_period": pl.Int32,
                "farm_id": pl.String, "lead_party_name": pl.String, "volume": pl.Decimal(38, 10)},
        orient="row",
    )


def _bitcoin_text(text: str) -> str:
    """A stored value with 8 decimals, or with all of its own when it has more (so a value an
    unrounded writer stored does not look equal to the recompute)."""
    value = Decimal(text)
    eight = value.quantize(Decimal("1e-8"))
    return f"{eight:.8f}" if eight == value else f"{value.normalize():f}"
