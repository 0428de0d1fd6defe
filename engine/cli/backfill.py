"""`engine run` (the backfill) and `engine scheduled` (the unattended job)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from engine.cli.common import (
    JsonOption,
    MemoryBudget,
    app,
    emit,
    err,
    exit_code,
    finite,
    graceful_stop,
    handled,
    memory_budget,
    resolve_database,
)
from engine.cli.month import FormulaOption
from engine.errors import InputError, quoted
from engine.months import Month
from engine.store.config import Settings

if TYPE_CHECKING:  # for annotations only
    from engine.operations.backfill import BackfillRequest, BackfillResult, Event
    from engine.operations.stopping import StopRequest
    from engine.reporting.backlog import DailySummary

Jobs = Annotated[int, typer.Option("--jobs", "-j", min=1, max=32,
                                   help="Months reconciled in parallel, each on its own connection.")]
MaxRate = Annotated[float | None, typer.Option(
    "--max-rows-per-second", min=1.0, callback=finite,
    help="Insert at most this many rows per second over the run (pauses between months).")]
Pause = Annotated[float, typer.Option("--pause", min=0.0, callback=finite,
                                      help="Seconds each worker rests after each month.")]
Retries = Annotated[int, typer.Option(
    "--retries", min=0, max=20,
    help="Retries of a month after a transient failure (lock or statement timeout, deadlock, "
    "serialization failure, lost connection), with exponential backoff and jitter.")]
BusyBackends = Annotated[int, typer.Option(
    "--busy-backends", min=1,
    help="With --load-aware: other sessions' active backends at which the database is busy.")]


@app.command("run")
@handled
def run(
    first: Annotated[str | None, typer.Option("--from", help="First month, YYYY-MM.")] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last month, YYYY-MM.")] = None,
    order: Annotated[str, typer.Option(
        help="plan (2024 newest first, then 2023 from December, then 2022), newest or oldest.")] = "plan",
    only: Annotated[str | None, typer.Option(
        help="Months by status, comma-separated: missing (never reconciled), failed, "
        "interrupted, stale (left in progress by a process that is gone), regressed (verified, "
        "then its calculations changed: `engine status --check`), completed, or all. "
        "Default: every month not completed.")] = None,
    jobs: Jobs = 3,
    budget: MemoryBudget = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for a month another process is reconciling instead of skipping it.")] = False,
    retries: Retries = 3,
    max_rows_per_second: MaxRate = None,
    pause: Pause = 0.0,
    load_aware: Annotated[bool, typer.Option(
        "--load-aware", help="Back off (fewer months at a time, longer pauses) while the database "
        "is busy: other active sessions, lock waits, a slow merge; recover when it calms.")] = False,
    busy_backends: BusyBackends = 4,
    plan_only: Annotated[bool, typer.Option("--plan-only", help="Print the plan and stop.")] = False,
    fix: Annotated[list[str] | None, typer.Option(
        "--fix", help="Also repair these classes in each month's transaction: drift, duplicates, "
        "orphans or all (repeat or comma-separate). Completed months are then included unless "
        "--only says otherwise; `engine undo --backfill ID` takes it all back.")] = None,
    formula: FormulaOption = "v1",
    as_json: JsonOption = False,
) -> None:
    """Backfill: reconcile every month that has curtailment (or --from/--to), several at a time,
    with retries, throttling and a live dashboard. A restarted run skips completed months.

    The plan is printed before work starts. Exit 0 when every month verified, 1 when a
    verification failed, 2 when a month failed on its data, 75 when transient failures
    outlasted the retries, 130 when interrupted.
    """
    from engine.formula import FORMULAS
    from engine.operations.backfill import BackfillRequest, RetryPolicy
    from engine.operations.selection import ORDERS, parse_selection
    from engine.operations.throttle import ThrottleConfig
    from engine.repairs.actions import parse_fix
    from engine.reporting import status_text

    if order not in ORDERS:
        raise InputError(f"--order must be one of {', '.join(ORDERS)}, not {quoted(order)}")
    if formula not in FORMULAS:
        raise InputError(f"--formula must be one of {', '.join(FORMULAS)}, not {quoted(formula)}")
    fixes = parse_fix(fix)
    request = BackfillRequest(
        first=Month.parse(first) if first else None, last=Month.parse(last) if last else None,
        order=order, selection=parse_selection(only if only or not fixes else "all"), jobs=jobs,
        wait_busy=wait, version=formula, fix=fixes,
        retry=RetryPolicy(attempts=retries + 1),
        throttle=ThrottleConfig(max_rows_per_second=max_rows_per_second, pause_seconds=pause,
                                load_aware=load_aware, busy_backends=busy_backends))
    settings = Settings.from_env(memory_budget_mb=memory_budget(budget))
    url = resolve_database(settings)
    if plan_only:
        _print_plan(settings, url, request, as_json)
        return
    from engine.store.paths import Layout

    Layout(settings.data_dir).check_writable()  # exit 74 now, not a failed month each
    result = _backfill(settings, url, request)
    emit(result.to_dict() if as_json else status_text.backfill_summary(result), as_json)
    raise typer.Exit(exit_code(result.exit_code))


@app.command("scheduled")
@handled
def scheduled(
    jobs: Jobs = 1,
    budget: MemoryBudget = None,
    retries: Retries = 3,
    max_rows_per_second: MaxRate = None,
    pause: Pause = 0.0,
    load_aware: Annotated[bool, typer.Option(
        "--load-aware/--no-load-aware",
        help="Back off while the database is busy (on by default for the unattended job).")] = True,
    busy_backends: BusyBackends = 4,
    as_json: JsonOption = False,
) -> None:
    """The unattended job, for cron or a systemd timer: reconcile what changed since the last
    verified runs (new or re-ingested curtailment days, never-reconciled, failed and stale
    months). Safe to start every few minutes: an overlapping start does nothing.

    Exit 0 when nothing was due, everything verified, or another start is still running;
    1 a verification failed; 2 bad data, configuration or an unreachable database;
    75 transient failures outlasted the retries (try again later).
    """
    from engine.operations.alerts import Alerter
    from engine.operations.backfill import RetryPolicy
    from engine.operations.scheduled import run_scheduled
    from engine.operations.throttle import ThrottleConfig
    from engine.reporting import status_text

    settings = Settings.from_env(memory_budget_mb=memory_budget(budget))
    url = resolve_database(settings)
    from engine.store.paths import Layout

    Layout(settings.data_dir).check_writable()
    throttle = ThrottleConfig(max_rows_per_second=max_rows_per_second, pause_seconds=pause,
                              load_aware=load_aware, busy_backends=busy_backends)
    with graceful_stop() as stop, dashboard("scheduled", jobs) as on_event:
        result = run_scheduled(settings, url=url, jobs=jobs, throttle=throttle,
                               retry=RetryPolicy(attempts=retries + 1),
                               on_event=_arming(stop, on_event),
                               alerter=Alerter(settings.alert_webhook, source="engine scheduled"),
                               stop=stop.event)
    if result.backfill is not None:
        write_daily_summary(settings, url)
    emit(result.to_dict() if as_json else status_text.scheduled_summary(result), as_json)
    raise typer.Exit(exit_code(result.exit_code))


def _backfill(settings: Settings, url: str, request: BackfillRequest) -> BackfillResult:
    from engine.operations.alerts import Alerter
    from engine.operations.backfill import run_backfill

    with graceful_stop() as stop, dashboard("run", request.jobs) as on_event:
        result = run_backfill(settings, request, url=url, on_event=_arming(stop, on_event),
                              alerter=Alerter(settings.alert_webhook, source="engine run"),
                              stop=stop.event)
    write_daily_summary(settings, url)
    return result


def _arming(stop: StopRequest, on_event: Callable[[Event], None]) -> Callable[[Event], None]:
    """Arm the graceful stop when the plan is made: connected, months about to start."""
    def arm_then(event: Event) -> None:
        if event.kind == "plan":
            stop.arm()
        on_event(event)
    return arm_then


def _print_plan(settings: Settings, url: str, request: BackfillRequest, as_json: bool) -> None:
    from engine.month.session import open_session
    from engine.operations.selection import build_plan
    from engine.reporting import status_text

    with open_session(settings, url) as session, session.transaction() as cursor:
        plan = build_plan(cursor, first=request.first, last=request.last, order=request.order,
                          selection=request.selection, engine_schema=settings.schema)
    emit(plan.to_dict() if as_json else status_text.plan_line(plan, request.jobs), as_json)


@contextmanager
def dashboard(command: str, jobs: int) -> Iterator[Callable[[Event], None]]:
    """An event callback: a rich live dashboard on a terminal, plain lines on stderr otherwise.
    The plan is printed first either way."""
    from engine.reporting import status_text
    from engine.reporting.live import Tracker

    tracker = Tracker(command)

    def on_event(event: Event) -> None:
        tracker.on_event(event)
        if event.kind == "plan" and event.plan is not None:
            if not event.plan.months and command == "scheduled":
                return  # the summary says it; cron logs stay short
            err.print(status_text.plan_line(event.plan, jobs), markup=False, highlight=False)
        elif not err.is_terminal and (line := status_text.event_line(event)):
            err.print(line, markup=False, highlight=False)

    if not err.is_terminal:
        yield on_event
        return
    from rich.live import Live

    with Live(get_renderable=lambda: status_text.live_panel(tracker.view()), console=err.console,
              refresh_per_second=4, transient=False):
        try:
            yield on_event
        finally:
            tracker.state = "finished"


def write_daily_summary(settings: Settings, url: str) -> Path | None:
    """Write today's summary to data/reports/YYYY-MM-DD.md (and .json); never fails the run."""
    import logging

    from engine.month.session import open_session
    from engine.reporting.backlog import todays_summary

    try:
        with open_session(settings, url) as session, session.transaction() as cursor:
            summary = todays_summary(cursor, engine_schema=settings.schema)
        return write_summary_files(settings.data_dir / "reports", summary)
    except Exception:  # a report file is not worth failing a finished run for
        logging.getLogger(__name__).warning("could not write the daily summary", exc_info=True)
        return None


def write_summary_files(directory: Path, summary: DailySummary) -> Path:
    """Write one day's summary as Markdown and JSON (atomically); raises `EnvironmentProblem`
    when the disk refuses."""
    from engine.reporting import status_text
    from engine.store.paths import write_text

    path = write_text(directory / f"{summary.day}.md", status_text.daily_markdown(summary))
    write_text(path.with_suffix(".json"), json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    return path
