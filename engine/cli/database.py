"""`engine db …` and `engine difficulty …`."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.common import (
    JsonOption,
    db_app,
    difficulty_app,
    emit,
    err,
    finite,
    handled,
    resolve_database,
)
from engine.errors import InputError, quoted
from engine.reporting import results
from engine.store.config import Settings


@db_app.command("init")
@handled
def db_init(
    create_indexes: Annotated[bool, typer.Option(
        "--create-indexes", help="Also create the indexes it proposes on the production tables "
        "(the unique key of historical_bitcoin_calculations, curtailment_records."
        "settlement_date), concurrently. Needs the tables' owner.")] = False,
    create_tables: Annotated[bool, typer.Option(
        "--create-tables", help="Also create the production tables that are missing (as "
        "production has them), on a database that is not the embedded one.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create the engine's schema and its missing tables, move an earlier version's tables into
    it, and list the tables under its names that are not its own (left alone). Production
    tables and their indexes are created only on the embedded server or when asked. Never
    drops or rewrites data."""
    from engine.store.schema import init_schema

    settings = Settings.from_env()
    result = init_schema(resolve_database(settings), engine_schema=settings.schema,
                         own_database=settings.database_url is None, create_indexes=create_indexes,
                         create_tables=create_tables)
    emit(result.to_dict() if as_json else results.init_summary(result), as_json)


@db_app.command("status")
@handled
def db_status(as_json: JsonOption = False) -> None:
    """Show whether the embedded PostgreSQL is running, where, and its URL."""
    from engine.store import db
    from engine.store.embedded import EmbeddedServer

    settings = Settings.from_env()
    if settings.database_url and not as_json:
        err.print(f"note: ENGINE_DATABASE_URL is set ({db.mask_url(settings.database_url)}); "
                  "the embedded server is not used")
    status = EmbeddedServer(settings.data_dir / "postgres").status()
    emit(status.to_dict() if as_json else results.server_summary(status), as_json)


@db_app.command("stop")
@handled
def db_stop() -> None:
    """Stop the embedded PostgreSQL (it starts again on the next command that needs it)."""
    from engine.store.embedded import EmbeddedServer

    stopped = EmbeddedServer(Settings.from_env().data_dir / "postgres").stop()
    typer.echo("stopped" if stopped else "it was not running")


@difficulty_app.command("load")
@handled
def difficulty_load(
    file: Annotated[Path, typer.Argument(help='JSON {"YYYY-MM-DD": value} or CSV date,difficulty.')],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would change (new, updated and unchanged dates, the "
        "first changed values old → new) and write nothing.")] = False,
    earliest: Annotated[str | None, typer.Option(
        help="The earliest date the file may hold (default 2009-01-03, the genesis block).")] = None,
    latest: Annotated[str | None, typer.Option(
        help="The latest date the file may hold (default tomorrow, UTC).")] = None,
    max_mb: Annotated[float, typer.Option(
        "--max-mb", min=0.001, max=4096, callback=finite,
        help="Refuse a file larger than this many megabytes.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Import daily difficulty; new dates are inserted, changed values updated. The file is
    checked first: each date once (duplicate JSON keys too), every date in range, every value
    a positive number the column keeps exactly; nothing is written unless all of it is good.
    """
    from engine.store import db
    from engine.store.difficulty import DateRange, load_difficulty, read_difficulty_file

    dates = DateRange.default(_date_option("--earliest", earliest), _date_option("--latest", latest))
    if dates.first > dates.last:
        raise InputError(f"--earliest {dates.first} is after --latest {dates.last}")
    frame = read_difficulty_file(file, dates=dates, max_bytes=int(max_mb * 1024 * 1024))
    settings = Settings.from_env()
    url = resolve_database(settings)
    with db.connect(url) as conn, db.translated_errors(url):
        result = load_difficulty(conn, frame, lock_timeout_ms=settings.lock_timeout_ms,
                                 statement_timeout_ms=settings.statement_timeout_ms,
                                 engine_schema=settings.schema, dry_run=dry_run)
    emit(result.to_dict() if as_json else results.difficulty_summary(result), as_json)


def _date_option(name: str, text: str | None) -> date | None:
    if text is None:
        return None
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{name} {quoted(text, 30)} is not a date of the form YYYY-MM-DD") from None
