"""The original tool's approach, replayed for the benchmark: per day and miner model, select
the day's records, compute the rows one by one, delete the day's calculations for the model,
and insert the rows in batches of 500 with parameterised multi-row INSERTs (one round trip
per batch, every statement its own transaction, as a connection pool in autocommit does).

Its plan also paused at least 200 ms between batches; those pauses are not slept here, they
are counted (`batches`) and added by the report.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pyarrow as pa

from engine.months import Month
from engine.store import db
from engine.store.config import MinerModel
from engine.store.schema import CALCULATIONS

BATCH_ROWS = 500
PAUSE_SECONDS = 0.2
_COLUMNS = 6

SELECT_DAY = """
SELECT settlement_period, farm_id, volume::text FROM curtailment_records
WHERE settlement_date = $1::date
"""
DELETE_DAY = f"DELETE FROM {CALCULATIONS} WHERE settlement_date = $1::date AND miner_model = $2"


def insert_batch_sql(rows: int) -> str:
    """`INSERT … VALUES ($1, …), (…)` for `rows` rows of six text parameters (as a Node
    driver sends them), cast where the column is not text."""
    values = ", ".join(
        f"(${i * _COLUMNS + 1}::date, ${i * _COLUMNS + 2}::int, ${i * _COLUMNS + 3}, "
        f"${i * _COLUMNS + 4}, ${i * _COLUMNS + 5}::numeric, ${i * _COLUMNS + 6}::numeric)"
        for i in range(rows)
    )
    return (f"INSERT INTO {CALCULATIONS} (settlement_date, settlement_period, farm_id, "
            f"miner_model, bitcoin_mined, difficulty) VALUES {values}")


def to_fixed_8(x: float) -> Decimal:
    """JavaScript's `x.toFixed(8)` for x ≥ 0: the double's exact value, ties upwards."""
    return Decimal(x).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP)


def day_rows(records: Sequence[tuple[int, str, str]], difficulty: Decimal,
             model: MinerModel) -> list[tuple[int, str, str]]:
    """The day's (period, farm, bitcoin text) rows for one model, computed one by one."""
    farms: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    for period, farm, volume in records:
        farms[(period, farm)] += abs(Decimal(volume))
    periods: dict[int, Decimal] = defaultdict(Decimal)
    for (period, _), mwh in farms.items():
        if mwh > 0:
            periods[period] += mwh
    network_th = float(difficulty) * 2**32 / 600 / 1e12
    rows = []
    for (period, farm), mwh in sorted(farms.items()):
        if mwh <= 0:
            continue
        period_mwh = float(periods[period])
        miners = math.floor(period_mwh * 1000 / (model.power_w / 1000 * 0.5))
        period_btc = float(to_fixed_8(miners * model.hashrate_th / network_th * 3.125 * 3))
        rows.append((period, farm, str(to_fixed_8(period_btc * float(mwh) / period_mwh))))
    return rows


def replay_month(url: str, month: Month, models: Sequence[MinerModel]) -> dict[str, Any]:
    """Rewrite `month` the original way; return counts and where the time went."""
    timings = dict.fromkeys(("select", "compute", "delete", "insert"), 0.0)
    counts = {"selects": 0, "deletes": 0, "batches": 0, "rows": 0}
    statements: dict[int, str] = {}
    names = [f"p{i}" for i in range(BATCH_ROWS * _COLUMNS)]
    start = time.perf_counter()
    with db.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT settlement_date, difficulty::text FROM engine.bitcoin_difficulty "
                       "WHERE settlement_date >= $1 AND settlement_date < $2",
                       (month.first_day, month.next_first_day))
        difficulty = {day: Decimal(value) for day, value in cursor.fetchall()}
        for day in month.days():
            for model in models:
                t = time.perf_counter()
                cursor.execute(SELECT_DAY, (day,))
                records = cursor.fetchall()
                counts["selects"] += 1
                timings["select"] += (t2 := time.perf_counter()) - t
                rows = day_rows(records, difficulty[day], model) if records else []
                timings["compute"] += (t3 := time.perf_counter()) - t2
                cursor.execute(DELETE_DAY, (day, model.name))
                counts["deletes"] += 1
                timings["delete"] += (t4 := time.perf_counter()) - t3
                for first in range(0, len(rows), BATCH_ROWS):
                    batch = rows[first:first + BATCH_ROWS]
                    params = [value for period, farm, bitcoin in batch for value in (
                        day.isoformat(), str(period), farm, model.name, bitcoin,
                        str(difficulty[day]))]
                    flat = pa.array(params, pa.string())
                    bound = pa.RecordBatch.from_arrays(
                        [flat.slice(i, 1) for i in range(len(params))], names=names[:len(params)])
                    sql = statements.setdefault(len(batch), insert_batch_sql(len(batch)))
                    cursor.execute(sql, bound)
                    counts["batches"] += 1
                    counts["rows"] += len(batch)
                timings["insert"] += time.perf_counter() - t4
    return {**counts, "timings": timings, "seconds": time.perf_counter() - start,
            "days": len(month.days()), "models": len(models)}


def batches_for(rows_per_day_and_model: Sequence[int]) -> int:
    """How many 500-row batches the original needs for these (day, model) row counts."""
    return sum(math.ceil(n / BATCH_ROWS) for n in rows_per_day_and_model)
