"""The `engine` command line: parse, call the library, render. No SQL and no maths here."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine import db, report
from engine.config import Settings
from engine.errors import EngineError
from engine.months import Month, parse_range

app = typer.Typer(
    help="Reconcile historical_bitcoin_calculations with curtailment_records, month by month.\n\n"
    "Without ENGINE_DATABASE_URL the engine uses an embedded PostgreSQL under data/.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would show database URLs
    add_completion=False,
    rich_markup_mode="markdown",
)
db_app = typer.Typer(help="The database: create the schema, show or stop the embedded server.",
                     no_args_is_help=True)
difficulty_app = typer.Typer(help="Daily bitcoin difficulty, which the formula needs per date.",
                             no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(difficulty_app, name="difficulty")

err = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def handled(command: F) -> F:
    """Turn engine errors into one line on stderr and their exit code; Ctrl-C into 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EngineError as error:
            if _state["debug"]:
                raise
            err.print(f"error: {error}", markup=False)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step to stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for every error.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _state["debug"] = debug


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
    url = _database(settings)
    with open_session(settings, url) as session, _steps() as on_step:
        result = reconcile_month(session, target, dry_run=dry_run, on_step=on_step)
    _emit(result.to_dict() if as_json else report.month_summary(result), as_json)
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
    url = _database(settings)
    err.print(f"generating {len(targets)} month(s) of demo data…")
    with _month_bar(len(targets)) as (on_month, on_step):
        result = run_demo(settings, targets, url=url, on_month=on_month, on_step=on_step)
    _emit(result.to_dict() if as_json else report.demo_summary(result), as_json)
    raise typer.Exit(result.exit_code)


@db_app.command("init")
@handled
def db_init(as_json: JsonOption = False) -> None:
    """Create the tables and indexes that are missing. Never drops or rewrites data."""
    from engine.schema import init_schema

    result = init_schema(_database(Settings.from_env()))
    _emit(result.to_dict() if as_json else report.init_summary(result), as_json)


@db_app.command("status")
@handled
def db_status(as_json: JsonOption = False) -> None:
    """Show whether the embedded PostgreSQL is running, where, and its URL."""
    from engine.embedded import EmbeddedServer

    settings = Settings.from_env()
    if settings.database_url and not as_json:
        err.print(f"note: ENGINE_DATABASE_URL is set ({db.mask_url(settings.database_url)}); "
                  "the embedded server is not used")
    status = EmbeddedServer(settings.data_dir / "postgres").status()
    _emit(status.to_dict() if as_json else report.server_summary(status), as_json)


@db_app.command("stop")
@handled
def db_stop() -> None:
    """Stop the embedded PostgreSQL (it starts again on the next command that needs it)."""
    from engine.embedded import EmbeddedServer

    stopped = EmbeddedServer(Settings.from_env().data_dir / "postgres").stop()
    typer.echo("stopped" if stopped else "it was not running")


@difficulty_app.command("load")
@handled
def difficulty_load(
    file: Annotated[Path, typer.Argument(help='JSON {"YYYY-MM-DD": value} or CSV date,difficulty.')],
    as_json: JsonOption = False,
) -> None:
    """Import daily difficulty; new dates are inserted, changed values updated."""
    from engine.difficulty import load_difficulty, read_difficulty_file

    frame = read_difficulty_file(file)
    settings = Settings.from_env()
    url = _database(settings)
    with db.connect(url) as conn, db.translated_errors(url):
        result = load_difficulty(conn, frame, lock_timeout_ms=settings.lock_timeout_ms,
                                 statement_timeout_ms=settings.statement_timeout_ms)
    _emit(result.to_dict() if as_json else report.difficulty_summary(result), as_json)


def _database(settings: Settings) -> str:
    """The URL to use; says where the embedded server is when that is the one."""
    url = db.resolve_url(settings.database_url, settings.data_dir)
    if settings.database_url is None:
        err.print(f"using the embedded PostgreSQL in {settings.data_dir / 'postgres'} "
                  f"({db.mask_url(url)})", markup=False)
    return url


def _emit(payload: Any, as_json: bool) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else payload)


@contextmanager
def _steps() -> Iterator[Callable[[Month, str], None]]:
    """A spinner naming the step in progress (on a terminal; silent otherwise)."""
    with err.status("starting…") as status:
        yield lambda month, step: status.update(f"{month}: {step}…")


@contextmanager
def _month_bar(total: int) -> Iterator[tuple[Callable[[Any], None], Callable[[Month, str], None]]]:
    """A progress bar over months on a terminal; a line per month otherwise."""
    if not err.is_terminal:
        yield (lambda result: err.print(f"{result.month} {result.status} "
                                        f"{result.rows['inserted']:,} inserted "
                                        f"{result.seconds:.2f} s"), lambda month, step: None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("reconciling", total=total)
        yield (lambda result: bar.advance(task),
               lambda month, step: bar.update(task, description=f"{month} {step}"))


def main() -> None:
    app()
