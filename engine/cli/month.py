"""`engine month` and `engine demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.common import (
    JsonOption,
    MemoryBudget,
    app,
    emit,
    err,
    exit_code,
    graceful_stop,
    handled,
    memory_budget,
    month_bar,
    resolve_database,
    step_spinner,
)
from engine.months import Month, parse_range
from engine.reporting import results
from engine.store.config import Settings

FixOption = Annotated[list[str] | None, typer.Option(
    "--fix", help="Also repair these classes in the same transaction: drift, duplicates, "
    "orphans or all (repeat the option or separate with commas).")]
FormulaOption = Annotated[str, typer.Option(
    "--formula", help="Formula version: v1 (what production used) or halving (6.25 BTC a "
    "block before 2024-04-20). Stored on the run.")]


@app.command()
@handled
def month(
    month: Annotated[str, typer.Argument(help="The month to reconcile, as YYYY-MM.")],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Extract, recompute and diff; report what would be inserted. Writes "
        "nothing to the database (the Parquet files under data/ are still written).")] = False,
    fix: FixOption = None,
    formula: FormulaOption = "v1",
    budget: MemoryBudget = None,
    as_json: JsonOption = False,
) -> None:
    """Reconcile one month: extract, recompute, diff, insert the missing rows in one
    transaction, verify parity with DuckDB and record progress. With `--fix` also repair
    drifted, duplicated or orphaned rows in that transaction (undo with `engine undo RUN`).

    Exit 0 when verified (or nothing to do), 1 when verification fails, 2 on bad input,
    missing difficulty or a database problem.
    """
    from engine.month.reconcile import reconcile_month
    from engine.month.session import open_session
    from engine.repairs.actions import parse_fix

    target = Month.parse(month)
    fixes = parse_fix(fix)
    settings = Settings.from_env(memory_budget_mb=memory_budget(budget))
    url = resolve_database(settings)
    with graceful_stop() as stop, open_session(settings, url) as session, \
            step_spinner() as on_step:
        stop.arm()  # connected: from here a first signal lets the month finish
        result = reconcile_month(session, target, dry_run=dry_run, on_step=on_step, fix=fixes,
                                 version=formula, stop=stop.event)
    emit(result.to_dict() if as_json else results.month_summary(result), as_json)
    raise typer.Exit(exit_code(result.exit_code))


@app.command()
@handled
def demo(
    months: Annotated[str, typer.Option(
        help="Months to generate, as YYYY-MM or FIRST..LAST.")] = "2022-01..2024-12",
    legacy_damage: Annotated[bool, typer.Option(
        "--legacy-damage", help="Also write the older writers' damage on top of the backlog, in "
        "known numbers per cause (fallback and stale difficulty, per-farm formula, linear SQL, "
        "per-record duplicates, halving reward, unknown), for `engine diff` and `--fix` to "
        "find. Its duplicates leave the table without the unique key index.")] = False,
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
        result = run_demo(settings, targets, url=url, legacy_damage=legacy_damage,
                          on_month=on_month, on_step=on_step)
    emit(result.to_dict() if as_json else results.demo_summary(result), as_json)
    raise typer.Exit(result.exit_code)
