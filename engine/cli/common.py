"""What every command shares: the typer apps, the stderr console, the error handling, and
the progress displays. The command modules import from here; nothing here imports them."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from engine.errors import EngineError, Interrupted
from engine.months import Month
from engine.store.config import Settings

app = typer.Typer(
    help="Reconcile historical_bitcoin_calculations with curtailment_records, month by month.\n\n"
    "Without ENGINE_DATABASE_URL the engine uses an embedded PostgreSQL under data/.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would show database URLs
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database: create the schema, show or stop the embedded server.",
                     no_args_is_help=True)
difficulty_app = typer.Typer(help="Daily bitcoin difficulty, which the formula needs per date.",
                             no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(difficulty_app, name="difficulty")



class _Stderr:
    """The stderr console (logs, errors, progress), made on first use so that `engine --help`
    does not import rich's console."""

    @functools.cached_property
    def console(self) -> Any:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


err = _Stderr()
_state: dict[str, Any] = {"debug": False, "stop": None}

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from engine.operations.stopping import StopRequest


def finite(value: float | None) -> float | None:
    """A typer callback: refuse `inf` and `nan`, which `float()` accepts, at parse time."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, not {value}")
    return value


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
MemoryBudget = Annotated[str | None, typer.Option(
    "--memory-budget", metavar="SIZE",
    help="Peak memory of the whole process, e.g. 1GB or 800MB (default 1GB, or "
    "ENGINE_MEMORY_BUDGET): a month that would not fit is computed in slices of days, still "
    "merged and verified as one month in one transaction. Parallel months share it.")]


def memory_budget(text: str | None) -> int | None:
    """The `--memory-budget` in MiB (None: not given); `InputError` for a bad size."""
    from engine.store.config import parse_memory

    return None if text is None else parse_memory("--memory-budget", text)


def handled(command: F) -> F:
    """Turn engine errors into one line on stderr and their exit code; Ctrl-C into 130 and
    SIGTERM into 143 (both roll back what is not committed)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from engine.operations.stopping import terminate_as_interrupt

        try:
            with terminate_as_interrupt():
                return command(*args, **kwargs)
        except Interrupted as error:
            err.print(f"interrupted: {_one_line(str(error))}" if str(error) != "interrupted"
                      else "interrupted", markup=False)
            raise typer.Exit(_stop_code(error.exit_code)) from None
        except EngineError as error:
            if _state["debug"]:  # the traceback too, with the same exit code
                traceback.print_exc()
            stop = _state["stop"]
            if stop is not None and stop.requested:  # asked to stop: what failed then was cut short
                err.print(f"interrupted: {_one_line(str(error))}", markup=False)
                raise typer.Exit(stop.exit_code) from None
            err.print(f"error: {_one_line(str(error))}", markup=False)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt as error:
            err.print("interrupted", markup=False)
            raise typer.Exit(_stop_code(getattr(error, "exit_code", 130))) from None

    return wrapper  # type: ignore[return-value]


def _stop_code(default: int) -> int:
    """130 for Ctrl-C, 143 for SIGTERM: the first signal of a graceful stop decides."""
    stop = _state["stop"]
    return stop.exit_code if stop is not None and stop.requested else default


def exit_code(code: int) -> int:
    """A result's exit code; once a signal asked the command to stop, 130 (143 for SIGTERM)
    even when the months in progress finished whole."""
    return _stop_code(code)


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """For commands that write month by month: once `arm()`ed (connected, about to start), the
    first SIGINT or SIGTERM lets the months in progress finish (or stop before they write) and
    the second stops at once; before that, a signal stops at once. The library checks
    `stop.event`."""
    from engine.operations.stopping import StopRequest, stop_on_signals

    stop = StopRequest()
    _state["stop"] = stop
    with stop_on_signals(stop):
        yield stop


#: The longest error line printed; messages quote what was typed in a few dozen characters,
#: so only a bug or a driver's message could reach it.
ERROR_LIMIT = 2000


def _one_line(message: str) -> str:
    line = " ".join(message.split("\n"))
    return line if len(line) <= ERROR_LIMIT else line[:ERROR_LIMIT] + "…"


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step to stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for every error.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _state["debug"] = debug


def resolve_database(settings: Settings, *, create: bool = True) -> str:
    """The URL to use; says where the embedded server is when that is the one. Commands that
    only read pass `create=False`: they refuse rather than create an embedded cluster."""
    from engine.store import db

    url = db.resolve_url(settings.database_url, settings.data_dir,
                         connect_timeout_s=settings.connect_timeout_s, create=create)
    if settings.database_url is None:
        from engine.store.embedded import EmbeddedServer

        where = EmbeddedServer(settings.data_dir / "postgres").pgdata
        shown = settings.data_dir / "postgres" if where.is_relative_to(Path.cwd()) else where
        err.print(f"using the embedded PostgreSQL in {shown} ({db.mask_url(url)})", markup=False)
    return url


def emit(payload: Any, as_json: bool) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else payload)


@contextmanager
def step_spinner() -> Iterator[Callable[[Month, str], None]]:
    """A spinner naming the step in progress (on a terminal; silent otherwise)."""
    with err.status("starting…") as status:
        yield lambda month, step: status.update(f"{month}: {step}…")


@contextmanager
def month_bar(total: int) -> Iterator[tuple[Callable[[Any], None], Callable[[Month, str], None]]]:
    """A progress bar over months on a terminal; a line per month otherwise."""
    if not err.is_terminal:
        yield (lambda result: err.print(f"{result.month} {result.status} "
                                        f"{result.rows['inserted']:,} inserted "
                                        f"{result.seconds:.2f} s"), lambda month, step: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err.console, transient=True) as bar:
        task = bar.add_task("reconciling", total=total)
        yield (lambda result: bar.advance(task),
               lambda month, step: bar.update(task, description=f"{month} {step}"))
