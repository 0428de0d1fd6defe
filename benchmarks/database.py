"""The benchmark's own database: an embedded PostgreSQL in a folder of its own, the demo data
at real scale, the production-shaped backlog kept aside so every measurement starts from the
same table, and the comparison of what two approaches wrote."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine.demo import DemoData, fill_database
from engine.months import Month
from engine.store import db
from engine.store.embedded import EmbeddedServer
from engine.store.schema import CALCULATIONS, KEY_COLUMNS, KEY_INDEX

log = logging.getLogger(__name__)

BACKLOG = "bench_backlog"
_KEY = ", ".join(KEY_COLUMNS)
# Every column but `id`, which the restored rows get anew from the sequence.
_COLUMNS = f"{_KEY}, bitcoin_mined, difficulty, calculated_at"
# What a run writes besides the calculations: progress, runs and the summaries it refreshes.
_ENGINE_TABLES = (f"{CALCULATIONS}, engine.reconciliation_progress, engine.reconciliation_runs, "
                  "engine.reconciliation_backfills, bitcoin_daily_summaries, bitcoin_monthly_summaries, "
                  "bitcoin_yearly_summaries")
_CALCULATED = f"SELECT {_KEY}, bitcoin_mined FROM {CALCULATIONS}"
_LARGEST_MONTH = """
SELECT to_char(settlement_date, 'YYYY-MM') FROM curtailment_records
WHERE settlement_date >= $1 AND settlement_date < $2
GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1
"""
#: How far two correct computations of a row may differ: two rounding steps of 1e-8.
TOLERANCE = 2e-8


@dataclass
class BenchDatabase:
    root: Path
    url: str = ""

    @property
    def server(self) -> EmbeddedServer:
        return EmbeddedServer(self.root / "postgres")

    def start(self) -> str:
        """Start (creating it if needed) the benchmark's own server; return its URL."""
        status = self.server.ensure_running()
        assert status.url is not None
        self.url = status.url
        return self.url

    def stop(self) -> None:
        self.server.stop()

    def fill(self, months: list[Month]) -> DemoData:
        """The demo data for `months` with its backlog; the backlog is kept aside."""
        data = fill_database(self.url, months, embedded=True)
        self._run(f"DROP TABLE IF EXISTS {BACKLOG}",
                  f"CREATE TABLE {BACKLOG} AS TABLE {CALCULATIONS}")
        return data

    def reset(self, start: str) -> None:
        """Put the calculations table back to `backlog` or `empty`, forget every run, vacuum,
        analyse and checkpoint, so each measurement starts from the same state."""
        statements = [f"TRUNCATE {_ENGINE_TABLES} RESTART IDENTITY"]
        if start == "backlog":
            statements.append(f"INSERT INTO {CALCULATIONS} ({_COLUMNS}) "
                              f"SELECT {_COLUMNS} FROM {BACKLOG} ORDER BY id")
        elif start != "empty":
            raise ValueError(f"unknown start {start!r}")
        self._run(*statements)
        self._run(f"VACUUM ANALYZE {CALCULATIONS}", "CHECKPOINT", autocommit=True)

    def drop_key_index(self) -> None:
        """Production's shape: no unique key on the calculations table."""
        self._run(f"DROP INDEX IF EXISTS {KEY_INDEX}")

    def create_key_index(self) -> None:
        self._run(f"CREATE UNIQUE INDEX IF NOT EXISTS {KEY_INDEX} ON {CALCULATIONS} ({_KEY})")

    def largest_month(self, months: list[Month]) -> Month:
        """The month with the most curtailment records."""
        with db.connect(self.url) as conn, conn.cursor() as cursor:
            rows = db.fetch_all(cursor, _LARGEST_MONTH, (months[0].first_day, months[-1].next_first_day))
        return Month.parse(rows[0][0])

    def snapshot(self, path: Path) -> Path:
        """The calculations table's keys and bitcoin, as Parquet."""
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pl.from_arrow(db.read_arrow(self.url, _CALCULATED))
        assert isinstance(frame, pl.DataFrame)
        frame.write_parquet(path)
        return path

    def _run(self, *statements: str, autocommit: bool = False) -> None:
        with db.connect(self.url, autocommit=autocommit) as conn, conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            if not autocommit:
                conn.commit()


def compare(reference: Path, other: Path, keys: pl.DataFrame | None = None) -> dict[str, object]:
    """How the table `other` holds differs from `reference` (both snapshots), on every key or
    on `keys` only: keys on one side only, keys present twice, values that differ at all and
    by more than two rounding steps, and the largest difference."""
    a = pl.read_parquet(reference)
    b = pl.read_parquet(other)
    if keys is not None:
        a = a.join(keys, on=list(KEY_COLUMNS), how="semi")
        b = b.join(keys, on=list(KEY_COLUMNS), how="semi")
    duplicates = (b.height - b.select(KEY_COLUMNS).unique().height
                  + a.height - a.select(KEY_COLUMNS).unique().height)
    joined = a.join(b, on=list(KEY_COLUMNS), how="full", coalesce=True, suffix="_other")
    delta = (pl.col("bitcoin_mined").cast(pl.Float64)
             - pl.col("bitcoin_mined_other").cast(pl.Float64)).abs()
    both = joined.filter(pl.col("bitcoin_mined").is_not_null()
                         & pl.col("bitcoin_mined_other").is_not_null())
    differing = both.filter(pl.col("bitcoin_mined") != pl.col("bitcoin_mined_other"))
    return {
        "rows": b.height,
        "only_reference": joined.filter(pl.col("bitcoin_mined_other").is_null()).height,
        "only_other": joined.filter(pl.col("bitcoin_mined").is_null()).height,
        "duplicate_keys": duplicates,
        "differing": differing.height,
        "beyond_tolerance": both.filter(delta > TOLERANCE + 1e-12).height,
        "max_difference": float(differing.select(delta.max()).item() or 0.0),
    }
