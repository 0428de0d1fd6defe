"""The library API for notebooks: a range of months as frames, from the database or from the
Parquet the pipeline wrote, and DuckDB views over that Parquet for ad-hoc SQL.

    from engine import explore
    ws = explore.Workspace.open()                    # Settings.from_env(), the configured database
    gaps = explore.load_gaps(ws, "2023-11..2024-01")
    explore.coverage(gaps, by="month")

Two pictures of the same months:
- `read_gaps`: the table as it is *now*: every month read from the database with connectorx
  and recomputed with `engine.formula`, diffed as the pipeline diffs. Nothing is written.
- `recorded_gaps`: what the newest run of each month found *before* it loaded, read from
  `data/expected`, `data/extracts` and `data/diffs`.
Before reconciliation the first shows the backlog; after it, the second still does.

The views (`coverage`, `missing_by_period`, `top_farms`, …) are in `engine.explore.views` and
re-exported here; `explain_row` is in `engine.explore.row`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Literal

import duckdb
import polars as pl

from engine import formula
from engine.explore.row import RowExplanation, explain
from engine.explore.views import (
    GROUPINGS,
    KINDS,
    STEP_ROWS,
    Gaps,
    coverage,
    diff_summary,
    missing_by_period,
    missing_keys,
    run_steps,
    step_share,
    time_per_month,
    top_days,
    top_farms,
)
from engine.month import extract
from engine.month.examine import find_differences
from engine.months import Month, parse_range
from engine.store import db, libpq, schema
from engine.store.config import MinerModel, Settings, load_miner_models
from engine.store.paths import Layout
from engine.store.schema import CALCULATIONS

log = logging.getLogger(__name__)

Months = Month | str | Iterable[Month | str] | None
Source = Literal["auto", "database", "recorded"]

#: The Parquet datasets `open_duckdb` makes views of: view name → folder under the data dir.
DATASETS = {
    "curtailment_records": "extracts/curtailment_records",
    "calculations": f"extracts/{CALCULATIONS}",
    "difficulty": "extracts/bitcoin_difficulty",
    "after": "extracts/after",
    "expected": "expected",
    **{kind: f"diffs/{kind}" for kind in KINDS},
}

SOURCE_MONTHS = """
SELECT month FROM (
    SELECT DISTINCT to_char(settlement_date, 'YYYY-MM') AS month FROM curtailment_records
    UNION SELECT DISTINCT to_char(settlement_date, 'YYYY-MM') FROM historical_bitcoin_calculations
) months ORDER BY month
"""

PROGRESS = """
SELECT month, status, expected_rows, present_rows, inserted_rows, missing_rows, drift_rows,
       orphan_rows, duplicate_rows, percent_complete::float8 AS percent_complete, attempts,
       last_error, last_run_id, started_at, finished_at, updated_at
FROM {engine}.reconciliation_progress WHERE month >= $1 AND month <= $2 ORDER BY month
"""

RUNS = """
SELECT id, month, command, formula, dry_run, status, rows::text AS rows,
       timings::text AS timings, error, started_at, finished_at,
       extract(epoch FROM finished_at - started_at)::float8 AS elapsed_seconds
FROM {engine}.reconciliation_runs WHERE month >= $1 AND month <= $2 ORDER BY id
"""

# DataType instances (not classes), so the schemas type-check as DataType mappings.
_DECIMAL = pl.Decimal(38, 10)
_CURTAILMENT = pl.Schema({"id": pl.Int32(), "settlement_date": pl.Date(),
                          "settlement_period": pl.Int32(), "farm_id": pl.String(),
                          "lead_party_name": pl.String(), "volume": _DECIMAL})
#: The key and values every calculation-like frame has (existing rows, drift, orphans…).
_ROWS = pl.Schema({"settlement_date": pl.Date(), "settlement_period": pl.Int32(),
                   "farm_id": pl.String(), "miner_model": pl.String(), "bitcoin_mined": _DECIMAL,
                   "difficulty": _DECIMAL})
_EMPTY = {"curtailment_records": _CURTAILMENT, CALCULATIONS: _ROWS,
          "bitcoin_difficulty": pl.Schema({"settlement_date": pl.Date(), "difficulty": _DECIMAL}),
          "expected": formula.EXPECTED_SCHEMA, "missing": formula.EXPECTED_SCHEMA,
          **{kind: _ROWS for kind in KINDS[1:]}}
_MONTH_FOLDER = re.compile(r"month=(\d{4}-\d{2})")


@dataclass(frozen=True)
class Workspace:
    """Where a notebook reads from: the settings, the database URL and the miner models."""

    settings: Settings
    url: str
    models: tuple[MinerModel, ...]

    @classmethod
    def open(cls, settings: Settings | None = None, url: str | None = None) -> Workspace:
        """Resolve the database (starting the embedded server when no URL is configured) and
        check that it answers. Raises `DatabaseUnavailable`, or `InputError` for a bad URL or
        miner models file."""
        settings = settings or Settings.from_env()
        url = url or db.resolve_url(settings.database_url, settings.data_dir,
                                    connect_timeout_s=settings.connect_timeout_s)
        with db.connect(url):  # fail at once: connectorx would retry a refused connection
            pass
        return cls(settings, url, load_miner_models(settings.miner_models_file))

    @property
    def layout(self) -> Layout:
        return Layout(self.settings.data_dir)

    def __repr__(self) -> str:
        return f"Workspace({db.mask_url(self.url)}, data_dir={self.settings.data_dir})"


def to_months(months: Months) -> list[Month] | None:
    """`None`, a `Month`, `"2023-12"`, `"2023-11..2024-01"` or a list of those as a sorted list
    of distinct months (`None` stays `None`: all of them). Raises `InputError` for bad text."""
    if months is None:
        return None
    items = [months] if isinstance(months, (Month, str)) else list(months)
    found: set[Month] = set()
    for item in items:
        found.update(parse_range(item) if isinstance(item, str) else [item])
    return sorted(found)


def source_months(ws: Workspace) -> list[Month]:
    """Every month with curtailment records or calculation rows in the database, in order.
    Raises `SchemaError` when the tables do not exist."""
    return [Month.parse(m) for m in _query(ws, SOURCE_MONTHS)["month"]]


def recorded_months(ws: Workspace) -> list[Month]:
    """Every month whose expected rows the pipeline wrote under the data dir, in order."""
    folder = ws.layout.root / "expected"
    found = (_MONTH_FOLDER.fullmatch(p.parent.name) for p in folder.glob("month=*/part-0.parquet"))
    return sorted(Month.parse(m[1]) for m in found if m)


# --- the table as it is now -----------------------------------------------------------------

def read_gaps(ws: Workspace, months: Months = None) -> Gaps:
    """The months as the database holds them now, recomputed with formula v1 and diffed exactly
    as `engine month` diffs them (drift and duplicates with their causes). Writes nothing.

    `months=None` takes every month with curtailment or calculations. Raises
    `MissingDifficulty` (naming the dates), `SourceDataError`, `SchemaError` or
    `TransientDatabaseError`.
    """
    chosen = to_months(months) or source_months(ws)
    parts: dict[str, list[pl.DataFrame]] = {name: [] for name in ("curtailment", "expected",
                                                                   "existing", *KINDS)}
    for snapshot in _read_months(ws, chosen):
        expected = formula.expected_rows(snapshot.curtailment, snapshot.difficulty, ws.models)
        tolerance = formula.one_miner_btc(snapshot.difficulty, ws.models)
        found = find_differences(snapshot, expected, tolerance, ws.models, "v1")
        for name, frame in (("curtailment", snapshot.curtailment), ("expected", expected),
                            ("existing", snapshot.calculations), *found.frames().items()):
            parts[name].append(frame)
    log.info("read %d month(s) from the database and recomputed them", len(chosen))
    return _gaps(chosen, "database", parts)


def recompute_expected(ws: Workspace, months: Months = None) -> pl.DataFrame:
    """Every row the months' curtailment implies now (formula v1), from a fresh read of the
    database; nothing is written. Raises `MissingDifficulty`, `SourceDataError`, `SchemaError`
    or `TransientDatabaseError`."""
    chosen = to_months(months) or source_months(ws)
    frames = [formula.expected_rows(s.curtailment, s.difficulty, ws.models)
              for s in _read_months(ws, chosen)]
    return _concat(frames, formula.EXPECTED_SCHEMA)


def read_existing(ws: Workspace, months: Months = None) -> pl.DataFrame:
    """The calculation rows the database holds now for the months (every column).
    Raises `SchemaError` or `TransientDatabaseError`."""
    chosen = to_months(months) or source_months(ws)
    frames = [s.calculations for s in _read_months(ws, chosen)]
    return _concat(frames, _EMPTY[CALCULATIONS])


# --- what the newest runs found -------------------------------------------------------------

def recorded_gaps(ws: Workspace, months: Months = None) -> Gaps:
    """The months as the newest run of each found them before its load, from the Parquet under
    the data dir. `months=None` takes every month with expected rows there; a month without
    files contributes nothing. Raises nothing for missing files."""
    chosen = to_months(months) or recorded_months(ws)
    return _gaps(chosen, "recorded", {
        "curtailment": [read_parquet(ws, "extracts/curtailment_records", chosen)],
        "expected": [read_expected(ws, chosen)],
        "existing": [read_parquet(ws, f"extracts/{CALCULATIONS}", chosen)],
        **{kind: [read_diff(ws, kind, chosen)] for kind in KINDS},
    })


def read_expected(ws: Workspace, months: Months = None) -> pl.DataFrame:
    """The expected rows the pipeline wrote (`data/expected/month=…`) for the months (all
    written months when `None`), with a `month` column. Empty when there are none."""
    return read_parquet(ws, "expected", months)


def read_diff(ws: Workspace, kind: str, months: Months = None) -> pl.DataFrame:
    """One diff class (`missing`, `drift`, `orphans`, `duplicates`) as the pipeline wrote it,
    with whatever columns it has and a `month` column. Raises `ValueError` for another kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown diff class {kind!r}; known: {', '.join(KINDS)}")
    return read_parquet(ws, f"diffs/{kind}", months)


def read_parquet(ws: Workspace, dataset: str, months: Months = None) -> pl.DataFrame:
    """The months' files of a dataset under the data dir (`expected`, `diffs/drift`,
    `extracts/curtailment_records`, …) as one frame with a `month` column (months whose files
    differ in columns are combined by name). Empty, with the dataset's usual columns, when
    no month has a file."""
    folder = ws.layout.root / dataset
    chosen = to_months(months)
    paths = sorted(folder.glob("month=*/part-0.parquet"))
    wanted = {str(m) for m in chosen} if chosen is not None else None
    frames = [pl.read_parquet(p).with_columns(month=pl.lit(p.parent.name.removeprefix("month=")))
              for p in paths if wanted is None or p.parent.name.removeprefix("month=") in wanted]
    empty = _EMPTY.get(dataset.rsplit("/", 1)[-1], _ROWS)
    return _concat(frames, pl.Schema([*empty.items(), ("month", pl.String)]))


def load_gaps(ws: Workspace, months: Months = None, source: Source = "auto") -> Gaps:
    """`read_gaps` (`database`), `recorded_gaps` (`recorded`), or with `auto` the database's
    picture unless nothing is missing there and runs have recorded what they found before
    their load, in which case that recorded picture. Raises as `read_gaps`, and `ValueError`
    for another `source`."""
    if source not in ("auto", "database", "recorded"):
        raise ValueError(f"source must be auto, database or recorded, not {source!r}")
    if source == "recorded":
        return recorded_gaps(ws, months)
    now = read_gaps(ws, months)
    if source == "database" or now.missing.height:
        return now
    before = recorded_gaps(ws, months if months is not None else now.months)
    return before if before.missing.height else now


# --- progress and runs ----------------------------------------------------------------------

def progress(ws: Workspace, months: Months = None) -> pl.DataFrame:
    """`reconciliation_progress` for the months (all when `None`): one row per month that
    has one, with its status, counts, percent complete, attempts and last error."""
    return _query(ws, schema.sql(PROGRESS, ws.settings.schema), _bounds(months))


def runs(ws: Workspace, months: Months = None) -> pl.DataFrame:
    """`reconciliation_runs` for the months (all when `None`), oldest first; `rows` and
    `timings` are JSON text (`run_steps`, `time_per_month` and `step_share` read them)."""
    return _query(ws, schema.sql(RUNS, ws.settings.schema), _bounds(months))


# --- ad-hoc SQL -----------------------------------------------------------------------------

def open_duckdb(ws: Workspace, gaps: Gaps | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per Parquet dataset that has files
    (`DATASETS`: curtailment_records, calculations, difficulty, expected, missing, drift,
    orphans, duplicates, and `after`, the months verification read back because they were not
    as predicted; all months, hive-partitioned: a `month` column), and with a
    `gaps` also its frames as `gaps_expected`, `gaps_missing`, `gaps_drift`, …
    The caller closes it."""
    connection = duckdb.connect()
    for view, folder in DATASETS.items():
        files = ws.layout.root / folder
        if not any(files.glob("month=*/*.parquet")):
            log.info("no Parquet under %s: no view %s", files, view)
            continue
        relation = connection.read_parquet(str(files / "*" / "*.parquet"), hive_partitioning=True,
                                           union_by_name=True)
        relation.create_view(view)
    if gaps is not None:
        for name in ("curtailment", "expected", "existing", *KINDS):
            connection.register(f"gaps_{name}", getattr(gaps, name).to_arrow())
    return connection


def explain_row(ws: Workspace, settlement_date: date, settlement_period: int, farm_id: str,
                miner_model: str) -> RowExplanation:
    """One calculation row recomputed step by step with formula v1 from the curtailment
    records the database holds now, with what the table stores for it (see
    `engine.explore.row.explain`). Raises `InputError` when the key has no qualifying
    curtailment or names an unknown model, `MissingDifficulty` when its date has none."""
    return explain(ws.url, ws.models, settlement_date, int(settlement_period), farm_id, miner_model,
                   lock_timeout_ms=ws.settings.lock_timeout_ms,
                   statement_timeout_ms=ws.settings.statement_timeout_ms,
                   engine_schema=ws.settings.schema)


# --- helpers --------------------------------------------------------------------------------

def _read_months(ws: Workspace, months: list[Month]) -> Iterator[extract.Snapshot]:
    def read(month: Month) -> extract.Snapshot:
        read_url = libpq.for_connectorx(ws.url)  # connectorx reads no .pgpass itself
        curtailment, calculations, difficulty = (extract.read(read_url, sql) for sql in (
            extract.curtailment_sql(month), extract.calculations_sql(month),
            extract.difficulty_sql(month, ws.settings.schema)))
        return extract.Snapshot.of_frames(month, curtailment, calculations, difficulty, {})

    # connectorx releases the GIL: a few months are read at once, in order.
    with ThreadPoolExecutor(3) as pool:
        yield from pool.map(read, months)


def _gaps(months: list[Month], source: str, parts: dict[str, list[pl.DataFrame]]) -> Gaps:
    schemas = {"curtailment": _CURTAILMENT, "existing": _ROWS, "expected": formula.EXPECTED_SCHEMA,
               **{kind: _EMPTY[kind] for kind in KINDS}}
    frames = {name: _concat(parts[name], schemas[name]) for name in schemas}
    return Gaps(months=tuple(months), source=source, **frames)


def _concat(frames: list[pl.DataFrame], empty: pl.Schema) -> pl.DataFrame:
    frames = [f for f in frames if f.width]
    if not frames:
        return empty.to_frame()
    return pl.concat(frames, how="diagonal_relaxed")


def _bounds(months: Months) -> tuple[str, str]:
    chosen = to_months(months)
    return (str(chosen[0]), str(chosen[-1])) if chosen else ("0000-00", "9999-99")


def _query(ws: Workspace, sql: str, params: tuple[object, ...] = ()) -> pl.DataFrame:
    with _cursor(ws) as cursor:
        cursor.execute(sql, params or None)
        frame = pl.from_arrow(cursor.fetch_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


@contextmanager
def _cursor(ws: Workspace) -> Iterator[db.Cursor]:
    settings = ws.settings
    with db.translated_errors(ws.url), db.connect(ws.url) as conn, db.transaction(
            conn, lock_timeout_ms=settings.lock_timeout_ms,
            statement_timeout_ms=settings.statement_timeout_ms) as cursor:
        yield cursor


__all__ = [
    "DATASETS", "GROUPINGS", "KINDS", "STEP_ROWS", "Gaps", "RowExplanation", "Workspace",
    "coverage", "diff_summary", "explain_row", "load_gaps", "missing_by_period", "missing_keys",
    "open_duckdb", "progress", "read_diff", "read_existing", "read_expected", "read_gaps",
    "read_parquet", "recompute_expected", "recorded_gaps", "recorded_months", "run_steps",
    "runs", "source_months", "step_share", "time_per_month", "to_months", "top_days", "top_farms",
]
