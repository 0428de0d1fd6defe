"""A month thirty times denser than the demo's: each farm of the demo's month with 29 sister
farms curtailing the same volumes (a farm `T_ABC-1` gains `T_ABC-1~01` … `T_ABC-1~29`).

    uv run python -m benchmarks.dense URL [--month 2023-12] [--sisters 29] [--present 0.0]

Fills the database at URL (its tables must be the engine's own or empty: it truncates the
production tables) and prints one JSON line: records, expected rows and rows left present.
`--present` keeps that share of the expected rows in the calculations table (a backlog), the
rest is missing. The memory and time of `engine month` on it are measured with
`benchmarks.dense measure` (see RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import polars as pl

from engine import formula
from engine.demo import generate
from engine.months import Month
from engine.reference import REFERENCE_DIR
from engine.store import db, schema
from engine.store.config import load_miner_models


def dense_records(month: Month, sisters: int, seed: int = 2024) -> pl.DataFrame:
    """The demo's curtailment records of `month`, each farm with `sisters` copies."""
    farms = generate.load_farms(REFERENCE_DIR / "bmu_mapping.json")
    records = generate.curtailment([month], farms, seed=seed)
    copies = [records] + [records.with_columns(farm_id=pl.col("farm_id") + f"~{k:02d}")
                          for k in range(1, sisters + 1)]
    return pl.concat(copies)


def fill(url: str, month: Month, sisters: int, present: float) -> dict[str, int]:
    schema.init_schema(url, own_database=True)
    records = dense_records(month, sisters)
    real = {date.fromisoformat(d): Decimal(v) for d, v in
            json.loads((REFERENCE_DIR / "difficulty_2024.json").read_text()).items()}
    difficulty = generate.difficulty([month], real)
    models = load_miner_models(REFERENCE_DIR / "miner_models.toml")
    expected = formula.expected_rows(records, difficulty, models)
    kept = expected.sample(fraction=present, seed=7) if present else expected.clear()
    with db.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(schema.sql("TRUNCATE curtailment_records, historical_bitcoin_calculations, "
                                  "{engine}.bitcoin_difficulty, {engine}.reconciliation_progress, "
                                  "{engine}.reconciliation_runs RESTART IDENTITY CASCADE"))
        cursor.adbc_ingest("curtailment_records", records.to_arrow(), mode="append")
        if kept.height:
            cursor.adbc_ingest(schema.CALCULATIONS, kept.to_arrow(), mode="append")
        with conn.cursor() as own:
            own.adbc_ingest("bitcoin_difficulty", difficulty.to_arrow(), mode="append",
                            db_schema_name=schema.DEFAULT_SCHEMA)
        conn.commit()
    with db.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE curtailment_records")
        cursor.execute(f"VACUUM ANALYZE {schema.CALCULATIONS}")
    return {"records": records.height, "expected": expected.height, "present": kept.height}


def run_measured(args: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    """Run `args`; return its exit code, stdout, stderr and its own peak RSS in MiB (from
    wait4, so no other child of this process counts)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped: tell Popen
        out.seek(0)
        err.seek(0)
        return process.returncode, out.read(), err.read(), usage.ru_maxrss / 1024


def measure(url: str, month: Month, data_dir: Path, *extra: str) -> dict[str, object]:
    """`engine month MONTH --json` as a process of its own: wall time, peak RSS, its result."""
    env = {**os.environ, "ENGINE_DATABASE_URL": url, "ENGINE_DATA_DIR": str(data_dir)}
    start = time.perf_counter()
    code, stdout, stderr, peak = run_measured(
        [sys.executable, "-m", "engine", "month", str(month), "--json", *extra], env)
    seconds = time.perf_counter() - start
    result = json.loads(stdout) if stdout else {"error": stderr[-500:]}
    return {"exit": code, "seconds": round(seconds, 2), "peak_rss_mb": round(peak),
            "status": result.get("status"), "rows": result.get("rows"),
            "timings": result.get("timings"), "error": result.get("error")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("fill", "measure"))
    parser.add_argument("url")
    parser.add_argument("--month", default="2023-12")
    parser.add_argument("--sisters", type=int, default=29)
    parser.add_argument("--present", type=float, default=0.0)
    parser.add_argument("--data-dir", type=Path, default=Path("data-dense"))
    parser.add_argument("--budget", help="engine month --memory-budget")
    args = parser.parse_args()
    month = Month.parse(args.month)
    if args.action == "fill":
        print(json.dumps(fill(args.url, month, args.sisters, args.present)))
    else:
        extra = ("--memory-budget", args.budget) if args.budget else ()
        print(json.dumps(measure(args.url, month, args.data_dir, *extra)))


if __name__ == "__main__":
    main()
