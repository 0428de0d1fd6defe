"""`engine month` and `engine demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from engine import report
from engine.cli import JsonOption, app, emit, err, handled, month_bar, resolve_database, step_spinner
from engine.config import Settings
from engine.months import Month, parse_range


@app.command()
@handled
def month(
    month: Annotated[str, typer.Argument(help="The month to reconcile, as YYYY-MM.")],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Extract, recompute and diff; report what would be inserted. Writes "
        "nothing to the database (the Parquet files under data/ are still written).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Reconcile one month: extract, recompute, diff, insert the missing rows in one
    transaction, verify parity with DuckDB and record progress.

    Exit 0 when verified (or nothing to do), 1 when verification fails, 2 on bad input,
    missing difficulty or a database problem.
    """
    from engine.pipeline import open_session, reconcile_month

    target = Month.parse(month)
    settings = Settings.from_env()
    url = resolve_database(settings)
    with open_session(settings, url) as session, step_spinner() as on_step:
        result = reconcile_month(session, target, dry_run=dry_run, on_step=on_step)
    emit(result.to_dict() if as_json else report.month_summary(result), as_json)
    raise typer.Exit(result.exit_code)


@app.command()
@handled
def demo(
    months: Annotated[str, typer.Option(
        help="Months to generate, as YYYY-MM or FIRST..LAST.")] = "2022-01..2024-12",
    as_json: JsonOption = False,
) -> None:
    """Fill the database with realistic synthetic data (real farms, seasonal wind, DST days,
    real 2024 difficulty, a production-shaped backlog) and reconcile every month.

    Replaces all data in the engine's tables: it runs on the embedded database, or on a
    database whose tables are empty.
    """
    from engine.demo import run_demo

    targets = parse_range(months)
    settings = Settings.from_env()
    url = resolve_database(settings)
    err.print(f"generating {len(targets)} month(s) of demo data…")
    with month_bar(len(targets)) as (on_month, on_step):
        result = run_demo(settings, targets, url=url, on_month=on_month, on_step=on_step)
    emit(result.to_dict() if as_json else report.demo_summary(result), as_json)
    raise typer.Exit(result.exit_code)
