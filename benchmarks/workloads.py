"""The measured workloads, each run as its own process so its wall time and peak memory are
its own: `python -m benchmarks.workloads NAME URL [ARGS…]`. Each prints one JSON line.

- `engine-months URL DATA_DIR FIRST..LAST`: `open_session` + `reconcile_month` for each
  month in turn, in one process (what `engine run --jobs 1` does, without its bookkeeping);
- `sql-months URL FIRST..LAST`: the in-database INSERT … SELECT per month;
- `original-month URL YYYY-MM`: the original tool's approach for one month;
- `copy-floor URL PARQUET_GLOB`: ADBC COPY (adbc_ingest) of those rows into a new table;
- `read-floor URL`: one connectorx read of the curtailment rows the engine reads.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

START = time.perf_counter()

from engine.months import Month, parse_range  # noqa: E402
from engine.reference import REFERENCE_DIR  # noqa: E402
from engine.store.config import Settings, load_miner_models  # noqa: E402

FLOOR_TABLE = "bench_copy_floor"
# The columns `engine.month.extract.curtailment_sql` reads, for the whole table at once.
READ_FLOOR_SQL = ("SELECT id, settlement_date, settlement_period, farm_id, lead_party_name, volume "
                  "FROM curtailment_records")


def engine_months(url: str, data_dir: str, months: str) -> dict[str, Any]:
    from engine.month.reconcile import reconcile_month
    from engine.month.session import open_session

    imported = time.perf_counter() - START
    settings = Settings(database_url=url, data_dir=Path(data_dir))
    results = []
    start = time.perf_counter()
    with open_session(settings) as session:
        for month in parse_range(months):
            result = reconcile_month(session, month)
            if result.status not in ("verified", "nothing_to_do"):
                raise SystemExit(f"{month}: {result.status} {result.to_dict()}")
            results.append(result)
    seconds = time.perf_counter() - start
    steps: dict[str, float] = {}
    for result in results:
        for step, value in result.timings.items():
            steps[step] = steps.get(step, 0.0) + value
    return {
        "seconds": seconds, "imports": imported, "steps": steps,
        "inserted": sum(r.rows["inserted"] for r in results),
        "verified": sum(r.rows["verified"] for r in results),
        "expected": sum(r.rows["expected"] for r in results),
        "months": [{"month": str(r.month), "status": r.status, "inserted": r.rows["inserted"],
                    "timings": r.timings} for r in results],
    }


def sql_months(url: str, months: str) -> dict[str, Any]:
    from benchmarks.in_database import insert_months

    return insert_months(url, parse_range(months), _models())


def original_month(url: str, month: str) -> dict[str, Any]:
    from benchmarks.original import replay_month

    return replay_month(url, Month.parse(month), _models())


def copy_floor(url: str, pattern: str) -> dict[str, Any]:
    import polars as pl

    from engine.store import db
    from engine.store.schema import CALCULATIONS, KEY_COLUMNS

    rows = pl.read_parquet(pattern, hive_partitioning=False).to_arrow()  # loaded before the clock starts
    seconds = {}
    with db.connect(url) as conn, conn.cursor() as cursor:
        for shape in ("bare", "indexed", "production"):
            cursor.execute(f"DROP TABLE IF EXISTS {FLOOR_TABLE}")
            if shape == "indexed":  # the same table, empty, with the calculations' unique key
                cursor.adbc_ingest(FLOOR_TABLE, rows.slice(0, 0), mode="create")
                cursor.execute(f"CREATE UNIQUE INDEX ON {FLOOR_TABLE} ({', '.join(KEY_COLUMNS)})")
            elif shape == "production":  # what the engine writes into: serial id, both indexes
                cursor.execute(f"CREATE TABLE {FLOOR_TABLE} (LIKE {CALCULATIONS} INCLUDING ALL)")
            conn.commit()
            start = time.perf_counter()
            copied = cursor.adbc_ingest(FLOOR_TABLE, rows, mode="create" if shape == "bare" else "append")
            conn.commit()
            seconds[shape] = time.perf_counter() - start
        cursor.execute(f"DROP TABLE {FLOOR_TABLE}")
        conn.commit()
    return {"seconds": seconds["bare"], "seconds_indexed": seconds["indexed"],
            "seconds_production": seconds["production"], "rows": int(copied),
            "columns": rows.column_names}


def read_floor(url: str) -> dict[str, Any]:
    from engine.store import db

    sql = READ_FLOOR_SQL
    start = time.perf_counter()
    table = db.read_arrow(url, sql)
    return {"seconds": time.perf_counter() - start, "rows": table.num_rows, "sql": sql}


def _models():
    return load_miner_models(REFERENCE_DIR / "miner_models.toml")


WORKLOADS: dict[str, Callable[..., dict[str, Any]]] = {
    "engine-months": engine_months, "sql-months": sql_months, "original-month": original_month,
    "copy-floor": copy_floor, "read-floor": read_floor,
}


def main(argv: list[str]) -> int:
    name, *args = argv
    payload = WORKLOADS[name](*args)
    print(json.dumps(payload, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
