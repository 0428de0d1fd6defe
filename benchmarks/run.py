"""The one benchmark command: same data, same database, same machine, one run.

    uv run python -m benchmarks [--months 2022-01..2024-12] [--month 2023-01] [--repeat N]
                                [--keep DIR] [--no-write] [--profile FILE]

It starts its own embedded PostgreSQL in a temporary folder, generates the demo data at real
scale (≈705k curtailment records, ≈1.51M expected rows, a backlog of ≈0.99M missing rows),
measures the engine and the alternatives each from the same reset table, checks that they
wrote the same rows, prints the figures and ratios, writes them into benchmarks/RESULTS.md
(between its markers), then stops the server and deletes the folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks import original
from benchmarks.database import BenchDatabase, compare
from benchmarks.measure import Measured, engine_command, python_module, run_measured
from benchmarks.report import render, write_results
from engine.months import Month, parse_range
from engine.reference import REFERENCE_DIR
from engine.store.config import load_miner_models

RESULTS = Path(__file__).parent / "RESULTS.md"


@dataclass
class Figure:
    """One measured (or extrapolated) figure. `work` excludes starting Python where the
    workload reports its own time; `wall` is the whole process."""

    name: str
    start: str
    rows: int
    work: float
    wall: float | None = None
    peak_mb: float | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows / self.work if self.work else 0.0


@dataclass
class Results:
    args: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    checks: dict[str, dict[str, object]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--months", default="2022-01..2024-12", help="the months to generate and run")
    parser.add_argument("--month", help="the single month for `engine month` and the original "
                        "approach (default: the one with the most curtailment records)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR and keep it (server stopped) instead of a temporary folder")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each engine, SQL and floor measurement N times, keep the fastest")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="also profile the 36 months from empty with pyinstrument into FILE "
                        "(run as `uv run --with pyinstrument python -m benchmarks --profile FILE`)")
    args = parser.parse_args(argv)
    if args.profile and importlib.util.find_spec("pyinstrument") is None:
        parser.error("--profile needs pyinstrument: "
                     "uv run --with pyinstrument python -m benchmarks --profile FILE")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    root = args.keep or Path(tempfile.mkdtemp(prefix="engine-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # as root the embedded server runs as `nobody`, which must reach its folder
    bench = BenchDatabase(root)
    started = time.perf_counter()
    try:
        results = measure_everything(bench, args)
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    results.seconds = time.perf_counter() - started
    markdown = render(results)
    print(markdown)
    if not args.no_write:
        write_results(RESULTS, markdown)
        print(f"\nwritten to {RESULTS}", file=sys.stderr)
    return 0


def measure_everything(bench: BenchDatabase, args: argparse.Namespace) -> Results:
    months = parse_range(args.months)
    results = Results(args={"months": f"{months[0]}..{months[-1]}", "repeat": args.repeat},
                      machine=_machine())
    say(f"benchmark folder {bench.root}")
    url = bench.start()
    say(f"generating {len(months)} month(s) of demo data…")
    results.data = bench.fill(months).to_dict()
    month = parse_range(args.month)[0] if args.month else bench.largest_month(months)
    results.args["month"] = str(month)
    run = _Run(bench, url, months, month, args.repeat, results)
    run.engine()
    run.engine_backfill()
    run.in_database()
    run.original()
    run.floors()
    if args.profile:
        run.profile(args.profile)
    return results


@dataclass
class _Run:
    """The measurements, in order, each from a reset table."""

    bench: BenchDatabase
    url: str
    months: list[Month]
    month: Month
    repeat: int
    results: Results

    @property
    def span(self) -> str:
        return f"{self.months[0]}..{self.months[-1]}"

    @property
    def engine_dir(self) -> Path:
        return self.bench.root / "engine-data"

    def best_of(self, start: str, command: list[str], env: dict[str, str] | None = None) -> Measured:
        """The fastest of `repeat` runs of `command`, each from the `start` table."""
        runs = []
        for _ in range(self.repeat):
            self.bench.reset(start)
            runs.append(run_measured(command, env=env))
        return min(runs, key=lambda run: run.payload["seconds"])

    def engine(self) -> None:
        figures = self.results.figures
        env = {"ENGINE_DATABASE_URL": self.url, "ENGINE_DATA_DIR": str(self.engine_dir)}
        say(f"engine month {self.month}…")
        run = self.best_of("backlog", engine_command("month", str(self.month), "--json"), env)
        figures["engine_month"] = Figure(
            f"`engine month {self.month}`", "backlog", run.payload["rows"]["inserted"],
            run.payload["seconds"], run.wall, run.peak_rss_mb,
            note=f"{run.payload['rows']['verified']:,} rows verified",
            detail={"steps": run.payload["timings"]})
        for start in ("backlog", "empty"):
            say(f"engine, {len(self.months)} months from {start}…")
            run = self.best_of(start, python_module(
                "benchmarks.workloads", "engine-months", self.url, str(self.engine_dir), self.span))
            payload = run.payload
            figures[f"engine_{start}"] = Figure(
                f"engine, {len(self.months)} months one after another (one process)", start,
                payload["inserted"], payload["seconds"], run.wall, run.peak_rss_mb,
                note=f"{payload['verified']:,} rows verified",
                detail={"steps": payload["steps"], "imports": payload["imports"]})
            self.bench.snapshot(self.bench.root / f"engine-{start}.parquet")

    def engine_backfill(self) -> None:
        """`engine run --jobs 3` over the span as a user runs it, and `engine diff` over it."""
        figures = self.results.figures
        env = {"ENGINE_DATABASE_URL": self.url, "ENGINE_DATA_DIR": str(self.engine_dir)}
        run_command = engine_command("run", "--from", str(self.months[0]), "--to",
                                     str(self.months[-1]), "--jobs", "3", "--json")
        for start in ("backlog", "empty"):
            say(f"engine run --jobs 3, {len(self.months)} months from {start}…")
            run = self.best_of(start, run_command, env)
            counts = run.payload["counts"]
            figures[f"engine_run_{start}"] = Figure(
                "`engine run --jobs 3`", start, counts["inserted"], run.payload["seconds"],
                run.wall, run.peak_rss_mb,
                note=f"{counts['verified']} of {counts['planned']} months verified")
            self.results.checks[f"engine_run_{start}"] = compare(
                self.bench.root / f"engine-{start}.parquet",
                self.bench.snapshot(self.bench.root / f"engine-run-{start}.parquet"))
        say(f"engine diff, {len(self.months)} months…")
        self.bench.reset("backlog")
        diff = run_measured(engine_command("diff", "--from", str(self.months[0]), "--to",
                                           str(self.months[-1]), "--json"), env=env, expect=(0, 1))
        totals = diff.payload["totals"]
        figures["engine_diff"] = Figure(
            "`engine diff` (writes nothing)", "backlog", 0,
            sum(m["seconds"] for m in diff.payload["months"]), diff.wall, diff.peak_rss_mb,
            note=f"{totals['expected']:,} expected rows compared, {totals['missing']:,} missing")

    def in_database(self) -> None:
        for start, indexed in (("backlog", True), ("backlog", False), ("empty", True)):
            key = f"sql_{start}" + ("" if indexed else "_no_index")
            if indexed:
                self.bench.reset("empty")  # an index on an empty table is built at once
                self.bench.create_key_index()
            else:
                self.bench.drop_key_index()
            say(f"in-database SQL, {len(self.months)} months from {start}"
                f"{'' if indexed else ' without the unique index'}…")
            run = self.best_of(start, python_module("benchmarks.workloads", "sql-months",
                                                    self.url, self.span))
            self.results.figures[key] = Figure(
                "in-database `INSERT … SELECT` per month", start, run.payload["inserted"],
                run.payload["seconds"], run.wall, run.peak_rss_mb,
                note="unique index" if indexed else "no index on the key (production's shape)",
                detail={"backend_peak_mb": run.payload["backend_peak_mb"]})
            self.results.checks[key] = compare(self.bench.root / f"engine-{start}.parquet",
                                               self.bench.snapshot(self.bench.root / f"{key}.parquet"))
        self.bench.create_key_index()

    def original(self) -> None:
        """One month measured, the span extrapolated, checked against the expected rows (it
        rewrites the drifted rows the engine reports and leaves alone)."""
        say(f"the original approach, {self.month}…")
        self.bench.reset("backlog")
        run = run_measured(python_module("benchmarks.workloads", "original-month", self.url,
                                         str(self.month)))
        expected = pl.scan_parquet(self.engine_dir / "expected" / "**" / "*.parquet",
                                   hive_partitioning=False)
        month_rows = self.bench.root / "expected-month.parquet"
        expected.filter(pl.col("settlement_date").dt.strftime("%Y-%m") == str(self.month)).select(
            "settlement_date", "settlement_period", "farm_id", "miner_model", "bitcoin_mined",
        ).collect().write_parquet(month_rows)
        self.results.checks["original"] = compare(
            month_rows, self.bench.snapshot(self.bench.root / "original.parquet"),
            keys=pl.read_parquet(month_rows).drop("bitcoin_mined"))
        self.results.figures.update(_original_figures(run, expected, len(self.months), self.month))

    def floors(self) -> None:
        say("floors: ADBC COPY and connectorx read…")
        figures = self.results.figures
        run = self.best_of("backlog", python_module(
            "benchmarks.workloads", "copy-floor", self.url,
            str(self.engine_dir / "expected" / "**" / "*.parquet")))
        p = run.payload
        figures["floor_copy"] = Figure("ADBC COPY (`adbc_ingest`) into a new table", "empty",
                                       p["rows"], p["seconds"], run.wall, run.peak_rss_mb)
        figures["floor_copy_indexed"] = Figure(
            "ADBC COPY into a new table with the unique key index", "empty", p["rows"],
            p["seconds_indexed"], note="for reference: what the index alone costs")
        figures["floor_copy_production"] = Figure(
            "ADBC COPY into a table shaped like the calculations table", "empty", p["rows"],
            p["seconds_production"], note="for reference: serial id, primary key and unique key")
        run = self.best_of("backlog", python_module("benchmarks.workloads", "read-floor", self.url))
        figures["floor_read"] = Figure("connectorx read of the curtailment records", "-",
                                       run.payload["rows"], run.payload["seconds"], run.wall,
                                       run.peak_rss_mb, note="read, not written")

    def profile(self, path: Path) -> None:
        say(f"profiling the engine, {len(self.months)} months from empty…")
        self.bench.reset("empty")
        run_measured([sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(path),
                      "-m", "benchmarks.workloads", "engine-months", self.url,
                      str(self.engine_dir), self.span])
        self.results.args["profile"] = str(path)


def _original_figures(run: Measured, expected: pl.LazyFrame, months: int, month: object
                      ) -> dict[str, Figure]:
    """The measured month and its extrapolation: the per-(day, model) select and delete cost
    times every (day, model) of the span, plus the per-batch cost (compute and insert) times
    the batches the span needs; the pauses are 200 ms per batch."""
    p = run.payload
    t = p["timings"]
    per_day_model = (t["select"] + t["delete"]) / p["selects"]
    per_batch = (t["compute"] + t["insert"]) / max(p["batches"], 1)
    counts = expected.group_by("settlement_date", "miner_model").len().collect()["len"].to_list()
    days = expected.select(pl.col("settlement_date").n_unique()).collect().item()
    batches = original.batches_for(counts)
    models = len(load_miner_models(REFERENCE_DIR / "miner_models.toml"))
    seconds = per_day_model * days * models + per_batch * batches
    rows = sum(counts)
    pauses = batches * original.PAUSE_SECONDS
    return {
        "original_month": Figure(f"original approach, {month}", "backlog", p["rows"], p["seconds"],
                                 run.wall, run.peak_rss_mb,
                                 note=f"{p['batches']} batches, {p['selects']} selects and deletes",
                                 detail={"steps": t, "pauses": p["batches"] * original.PAUSE_SECONDS}),
        "original_all": Figure(f"original approach, {months} months (extrapolated)", "any", rows,
                               seconds, note=f"{batches:,} batches", detail={"batches": batches}),
        "original_all_paused": Figure(f"original approach, {months} months, with its pauses "
                                      "(extrapolated)", "any", rows, seconds + pauses,
                                      note=f"+ {batches:,} × 200 ms"),
    }


def _machine() -> dict[str, Any]:
    import os

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
            "python": platform.python_version(), "system": platform.platform(terse=True),
            "load_before": load}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
