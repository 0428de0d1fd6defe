"""`engine status`, `engine status-month` and `engine report`: read from the database."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.backfill import write_summary_files
from engine.cli.common import JsonOption, app, emit, err, finite, handled, resolve_database
from engine.errors import InputError, quoted
from engine.months import Month
from engine.store.config import Settings

FORMATS = ("text", "json", "markdown")


@app.command("status")
@handled
def status(
    watch: Annotated[bool, typer.Option(
        "--watch", help="Follow the newest backfill (`engine run` or `engine scheduled`, in any "
        "process) live, read from the progress tables, until it ends.")] = False,
    interval: Annotated[float, typer.Option(
        min=0.1, callback=finite, help="Seconds between refreshes of --watch.")] = 2.0,
    check: Annotated[bool, typer.Option(
        "--check", help="Compare every verified month with the database in one pass: list the "
        "days whose source changed, and mark the months whose calculations changed since they "
        "were verified `regressed` (alerting through ENGINE_ALERT_WEBHOOK). Exit 1 when "
        "anything changed.")] = False,
    first: Annotated[str | None, typer.Option(
        "--from", help="With --check: the first month to check, YYYY-MM.")] = None,
    last: Annotated[str | None, typer.Option(
        "--to", help="With --check: the last month to check, YYYY-MM.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Where the reconciliation stands: percent reconciled overall, per year and per miner
    model; months by status; rows expected, present and missing; the last run and when.
    With --check, what changed since the months were verified."""
    from engine.month.session import open_session
    from engine.reporting import status_text
    from engine.reporting.status import get_status

    if (first or last) and not check:
        raise InputError("--from and --to go with --check")
    bounds = (Month.parse(first) if first else None, Month.parse(last) if last else None)
    settings = Settings.from_env()
    url = resolve_database(settings, create=False)
    if check:
        from engine.operations.alerts import Alerter
        from engine.operations.check import run_check
        from engine.reporting.check_text import check_text

        checked = run_check(settings, url, *bounds,
                            alerter=Alerter(settings.alert_webhook, source="engine status --check"))
        emit(checked.to_dict() if as_json else check_text(checked), as_json)
        raise typer.Exit(checked.exit_code)
    if watch:
        _watch(settings, url, interval, as_json)
        return
    with open_session(settings, url) as session, session.transaction() as cursor:
        result = get_status(cursor, [m.name for m in session.models],
                            engine_schema=settings.schema)
    emit(result.to_dict() if as_json else status_text.status_text(result), as_json)


@app.command("status-month")
@handled
def status_month(
    month: Annotated[str, typer.Argument(help="The month, as YYYY-MM.")],
    as_json: JsonOption = False,
) -> None:
    """One month by day: expected, present and missing rows per miner model, the incomplete
    days first; the month's status, attempts, last error and last run."""
    from engine.month.session import open_session
    from engine.reporting import status_text
    from engine.reporting.status import get_month_status

    target = Month.parse(month)
    settings = Settings.from_env()
    url = resolve_database(settings, create=False)
    with open_session(settings, url) as session, session.transaction() as cursor:
        result = get_month_status(cursor, target, [m.name for m in session.models],
                                  engine_schema=settings.schema)
    emit(result.to_dict() if as_json else status_text.month_status_text(result), as_json)


@app.command("report")
@handled
def report(
    format: Annotated[str, typer.Option(
        "--format", help="text, json, or markdown (writes a file under data/reports/, and one "
        "summary file per day of runs).")] = "text",
    output: Annotated[Path | None, typer.Option(
        help="Where --format markdown writes the report (default data/reports/report-…md).")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel months the estimate assumes.")] = 3,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write one self-contained HTML page (status tables, a heatmap of "
        "the missing rows by day, charts per year and month) to this file; it opens offline.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The remaining work (months and days with missing rows, worst first), the failures with
    their errors, and the time left, estimated from the measured speed of earlier runs."""
    from engine.month.session import open_session
    from engine.reporting import status_text
    from engine.reporting.backlog import build_report, daily_summaries
    from engine.reporting.status import get_status
    from engine.store.paths import check_output, write_text

    chosen = "json" if as_json else format
    if chosen not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {quoted(format)}")
    if output is not None and chosen != "markdown":
        raise InputError("--output is where --format markdown writes; give --format markdown, "
                         "or --html FILE for the HTML page")
    for target in (html, output if chosen == "markdown" else None):
        if target is not None:  # refused before the database is read
            check_output(target)
    settings = Settings.from_env()
    url = resolve_database(settings, create=False)
    with open_session(settings, url) as session, session.transaction() as cursor:
        models = [m.name for m in session.models]
        result = build_report(cursor, models, jobs=jobs, engine_schema=settings.schema)
        summaries = daily_summaries(cursor, engine_schema=settings.schema) if chosen == "markdown" else []
        overview = get_status(cursor, models, engine_schema=settings.schema) if html else None
    if html and overview:
        from engine.reporting.html_page import render

        write_text(html, render(overview, result), make_parents=False)
        err.print(f"wrote {html}", markup=False)  # a path may hold [brackets]
    if chosen != "markdown":
        emit(result.to_dict() if chosen == "json" else status_text.report_text(result),
             chosen == "json")
        return
    reports = settings.data_dir / "reports"
    path = output or reports / f"report-{datetime.now():%Y%m%d-%H%M%S}.md"
    write_text(path, status_text.report_markdown(result), make_parents=output is None)
    for summary in summaries:
        write_summary_files(reports, summary)
    typer.echo(f"wrote {path}" + (f" and {len(summaries)} daily summar"
                                   f"{'y' if len(summaries) == 1 else 'ies'} in {reports}"
                                   if summaries else ""))


def _watch(settings: Settings, url: str, interval: float, as_json: bool) -> None:
    from rich.live import Live

    from engine.reporting import status_text
    from engine.reporting.live import read_live
    from engine.store import db

    def view():  # type: ignore[no-untyped-def]
        with db.connect(url) as conn, db.translated_errors(url), conn.cursor() as cursor:
            return read_live(cursor, engine_schema=settings.schema)

    current = view()
    if current is None:
        emit({"backfill": None} if as_json else "no backfill has run yet", as_json)
        return
    if as_json or not err.is_terminal:
        while True:
            emit(current.to_dict() if as_json else status_text.live_line(current), as_json)
            if current.state != "running":
                return
            time.sleep(interval)
            current = view() or current
    with Live(status_text.live_panel(current), console=err.console, refresh_per_second=4) as live:
        while current.state == "running":
            time.sleep(interval)
            current = view() or current
            live.update(status_text.live_panel(current))
