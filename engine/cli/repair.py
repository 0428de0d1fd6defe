"""`engine diff`, `engine plan`, `engine apply` and `engine undo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.cli.common import JsonOption, app, emit, handled, resolve_database, step_spinner
from engine.cli.month import FixOption, FormulaOption
from engine.errors import InputError
from engine.months import Month, month_range
from engine.reporting import results
from engine.store.config import Settings


@app.command()
@handled
def diff(
    month: Annotated[str | None, typer.Argument(help="The month to diff, as YYYY-MM.")] = None,
    first: Annotated[str | None, typer.Option("--from", help="First month of a range.")] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last month of a range.")] = None,
    formula: FormulaOption = "v1",
    samples: Annotated[int, typer.Option(help="Rows to show of each class.", min=0, max=10_000)] = 3,
    as_json: JsonOption = False,
) -> None:
    """Show what differs between the calculations and what the source implies: missing,
    drift, orphans and duplicates, with the probable cause of each drifted or duplicated row
    and whether the summaries agree. Writes data/diffs/CLASS/month=YYYY-MM/; changes nothing
    in the database.

    Exit 0 when every month is exact, 1 when anything differs, 2 on bad input.
    """
    from engine.month.session import open_session
    from engine.operations.review import diff_months

    months = _months(month, first, last)
    settings = Settings.from_env()
    url = resolve_database(settings, create=False)
    with open_session(settings, url) as session, step_spinner() as on_step:
        result = diff_months(session, months, version=formula, samples=samples,
                             on_month=lambda found: on_step(found.month, "diffed"))
    emit(result.to_dict() if as_json else results.diff_summary(result), as_json)
    raise typer.Exit(result.exit_code)


@app.command()
@handled
def plan(
    month: Annotated[str, typer.Argument(help="The month to plan, as YYYY-MM.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The plan file to write (Parquet).")],
    fix: FixOption = None,
    formula: FormulaOption = "v1",
    as_json: JsonOption = False,
) -> None:
    """Write what `engine month MONTH --fix …` would change to a Parquet file, with a
    fingerprint of the month's source rows; `engine apply FILE` carries it out later (and
    refuses if the source changed). Changes nothing in the database.
    """
    from engine.month.session import open_session
    from engine.operations.review import make_plan
    from engine.repairs.plans import write
    from engine.store.paths import check_output

    target = Month.parse(month)
    check_output(output)  # a device, a FIFO or a directory is refused before any work
    settings = Settings.from_env()
    url = resolve_database(settings, create=False)
    with open_session(settings, url) as session:
        made = make_plan(session, target, fix=fix or (), version=formula)
    write(made, output)
    emit(made.to_dict() | {"file": str(output)} if as_json else results.plan_summary(made, output),
         as_json)


@app.command()
@handled
def apply(
    file: Annotated[Path, typer.Argument(help="A plan written by `engine plan`.")],
    as_json: JsonOption = False,
) -> None:
    """Carry out a plan in one transaction, as `engine month --fix` would, but only if the
    month's source still has the plan's fingerprint and the plan's changes are still exactly
    what is needed. Exit 0 when verified, 1 when verification fails, 2 when the plan is
    outdated or bad.
    """
    from engine.month.session import open_session
    from engine.operations.review import apply_plan

    settings = Settings.from_env()
    url = resolve_database(settings, create=False)
    with open_session(settings, url) as session, step_spinner() as on_step:
        result = apply_plan(session, file, on_step=on_step)
    emit(result.to_dict() if as_json else results.month_summary(result), as_json)
    raise typer.Exit(result.exit_code)


BIGINT_MAX = 2**63 - 1  # run and backfill ids are bigint; a larger number is no id


@app.command()
@handled
def undo(
    run_id: Annotated[int | None, typer.Argument(
        max=BIGINT_MAX, help="The run to undo (the number `engine month` prints as `run N`).")] = None,
    backfill: Annotated[int | None, typer.Option(
        "--backfill", max=BIGINT_MAX, help="Undo every run of this backfill instead (the number `engine run` "
        "prints as `backfill N`), newest first, after checking that each can be undone.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Undo one run: remove the rows it inserted and put back every row it updated or deleted,
    exactly as they were (from data/undo/RUN_ID/), in one transaction; then refresh and verify
    the month's summaries. Refuses if a later change touched those rows. With --backfill, undo
    each run of an `engine run` that way, newest first; if any of them cannot be undone, it
    refuses before undoing one (exit 2).
    """
    from engine.month.session import open_session
    from engine.operations.review import undo_backfill, undo_run

    if (run_id is None) == (backfill is None):
        raise InputError("give a run id or --backfill ID (one of them)")
    settings = Settings.from_env()
    url = resolve_database(settings, create=False)
    with open_session(settings, url) as session:
        if run_id is not None:
            result = undo_run(session, run_id)
            emit(result.to_dict() if as_json else results.undo_summary(result), as_json)
            raise typer.Exit(result.exit_code)
        assert backfill is not None
        undone = undo_backfill(session, backfill, on_run=None if as_json else (
            lambda done: typer.echo(results.undo_summary(done))))
    if as_json:
        emit({"backfill_id": backfill, "runs": [r.to_dict() for r in undone]}, True)
    raise typer.Exit(max(r.exit_code for r in undone))


def _months(month: str | None, first: str | None, last: str | None) -> list[Month]:
    if month and (first or last):
        raise InputError("give a month or --from/--to, not both")
    if month:
        return [Month.parse(month)]
    if not (first and last):
        raise InputError("give a month (YYYY-MM) or both --from and --to")
    return month_range(Month.parse(first), Month.parse(last))

