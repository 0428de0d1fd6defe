"""The in-database alternative: formula v1 as one set-based INSERT … SELECT per month, in
plain SQL inside PostgreSQL. What a DBA would write instead of the engine.

Window sums per period, a cross join with the miner models, NOT EXISTS against what the table
holds. Every step is float8 in DESIGN.md's order, so it matches formula v1 except where
`round(x::numeric, 8)` differs from `toFixed(8)`: PostgreSQL turns a float8 into numeric
through its 15 significant digits, not its exact binary value, so near-ties can round the
other way (by 1e-8, and the farm's split of a period that moved by 1e-8).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from engine.months import Month
from engine.store import db
from engine.store.config import MinerModel
from engine.store.schema import CALCULATIONS

MODELS = "bench_miner_models"

CREATE_MODELS = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {MODELS} (
    miner_model text PRIMARY KEY, hashrate_th float8 NOT NULL, power_w float8 NOT NULL)
"""

# $1 and $2: the month's first day and the next month's first day.
INSERT_MONTH = f"""
INSERT INTO {CALCULATIONS}
    (settlement_date, settlement_period, farm_id, miner_model, bitcoin_mined, difficulty,
     calculated_at)
WITH farms AS (
    SELECT settlement_date, settlement_period, farm_id, sum(abs(volume)) AS farm_mwh
    FROM curtailment_records
    WHERE settlement_date >= $1::date AND settlement_date < $2::date
    GROUP BY settlement_date, settlement_period, farm_id
    HAVING sum(abs(volume)) > 0
), pooled AS (
    SELECT settlement_date, settlement_period, farm_id, farm_mwh::float8 AS farm_mwh,
           (sum(farm_mwh) OVER (PARTITION BY settlement_date, settlement_period))::float8
               AS period_mwh
    FROM farms
), periods AS (
    SELECT p.settlement_date, p.settlement_period, p.farm_id, m.miner_model, d.difficulty,
           p.farm_mwh, p.period_mwh,
           round((floor(p.period_mwh * 1000::float8 / (m.power_w / 1000::float8 * 0.5::float8))
                  * m.hashrate_th
                  / (d.difficulty::float8 * 2::float8 ^ 32::float8 / 600::float8 / 1e12::float8)
                  * 3.125::float8 * 3::float8)::numeric, 8) AS period_btc
    FROM pooled p
    JOIN engine.bitcoin_difficulty d USING (settlement_date)
    CROSS JOIN {MODELS} m
)
SELECT settlement_date, settlement_period, farm_id, miner_model,
       round((period_btc::float8 * farm_mwh / period_mwh)::numeric, 8), difficulty, localtimestamp
FROM periods r
WHERE NOT EXISTS (
    SELECT 1 FROM {CALCULATIONS} t
    WHERE t.settlement_date = r.settlement_date AND t.settlement_period = r.settlement_period
      AND t.farm_id = r.farm_id AND t.miner_model = r.miner_model
)
"""


def prepare(cursor: db.Cursor, models: Sequence[MinerModel]) -> None:
    """Create and fill the session's miner models table (bound values, no SQL rendering)."""
    cursor.execute(CREATE_MODELS)
    cursor.execute(f"TRUNCATE {MODELS}")
    table = pa.table({"miner_model": [m.name for m in models],
                      "hashrate_th": [m.hashrate_th for m in models],
                      "power_w": [m.power_w for m in models]})
    cursor.adbc_ingest(MODELS, table, mode="append", temporary=True)


def insert_months(url: str, months: Sequence[Month], models: Sequence[MinerModel]
                  ) -> dict[str, Any]:
    """Run the INSERT … SELECT for each month, one transaction each; return the timings."""
    per_month = []
    with db.connect(url) as conn, conn.cursor() as cursor:
        prepare(cursor, models)
        conn.commit()
        cursor.execute("SELECT pg_backend_pid()")
        backend = int(cursor.fetchone()[0])  # type: ignore[index]
        for month in months:
            bounds = (month.first_day, month.next_first_day)
            before = _count(cursor, bounds)
            conn.commit()
            start = time.perf_counter()
            cursor.execute(INSERT_MONTH, bounds)
            conn.commit()
            seconds = time.perf_counter() - start
            # ADBC reports no row count for a statement with bound parameters: count instead.
            inserted = _count(cursor, bounds) - before
            conn.commit()
            per_month.append({"month": str(month), "inserted": inserted, "seconds": seconds})
        backend_peak = backend_peak_mb(backend)
    return {"months": per_month, "inserted": sum(m["inserted"] for m in per_month),
            "seconds": sum(m["seconds"] for m in per_month), "backend_peak_mb": backend_peak}


def _count(cursor: db.Cursor, bounds: tuple[object, object]) -> int:
    cursor.execute(f"SELECT count(*) FROM {CALCULATIONS} "
                   "WHERE settlement_date >= $1 AND settlement_date < $2", bounds)
    return int(cursor.fetchone()[0])  # type: ignore[index]


def backend_peak_mb(pid: int) -> float | None:
    """The server backend's VmHWM (its peak resident set, shared buffers it touched included),
    when this process may read it; None otherwise."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
