"""Connections, transactions and timeouts. Knows no domain table.

Writes go through ADBC (libpq; bulk ingest is COPY). Bulk reads go through connectorx, which
cannot bind parameters: only typed values are rendered into its SQL, by `literal`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import connectorx as cx
import pyarrow as pa
from adbc_driver_manager.dbapi import Connection, Cursor

from engine.errors import (
    DatabaseUnavailable,
    EngineError,
    EnvironmentProblem,
    Interrupted,
    SchemaError,
)
from engine.store import dsn

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs of failures that are worth trying again: serialization failure, deadlock, lock
# timeout, statement timeout / cancel, shutdown and connection loss.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})


class TransientDatabaseError(EngineError):
    """A failure that may pass if tried again (lock or statement timeout, lost connection…)."""


def mask_url(url: str) -> str:
    """The URL (or key=value string) with its password replaced by `***` and without its
    parameters (which may hold a password too), safe to print and to store."""
    return dsn.mask(url)


def with_timeouts(url: str, *, lock_timeout_ms: int, statement_timeout_ms: int) -> str:
    """`url` with the session timeouts in its `options` parameter, so that connectorx reads
    give up behind a lock as the engine's own transactions do (`SET LOCAL` cannot reach them)."""
    parts = urlsplit(check_url(url))
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join(v for k, v in query if k == "options")
    options = (f"{options} -c lock_timeout={lock_timeout_ms} "
               f"-c statement_timeout={statement_timeout_ms}").strip()
    query = [(k, v) for k, v in query if k != "options"] + [("options", options)]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def check_url(url: str, *, connect_timeout_s: float | None = None) -> str:
    """`url` (a TCP `postgresql://` URL or a libpq key=value string) as the URL the drivers
    connect with, with its `connect_timeout`; raise `InputError` naming the problem."""
    return dsn.normalize(url, connect_timeout_s=connect_timeout_s)


def connect(url: str, *, autocommit: bool = False) -> Connection:
    """Open an ADBC connection, giving up after the URL's `connect_timeout` (libpq's), and
    letting Ctrl-C through meanwhile. Raises `DatabaseUnavailable` with a masked URL and a
    scrubbed driver message."""
    url = check_url(url)
    try:
        return _interruptible(lambda: adbc.connect(url, autocommit=autocommit),
                              lambda conn: conn.close())
    except adbc_driver_manager.Error as error:
        message = dsn.scrub(_first_line(error), url)
        if "timeout expired" in message:
            message += (f" (nothing answered as PostgreSQL within {dsn.connect_timeout(url)} s; "
                        "ENGINE_CONNECT_TIMEOUT_S sets the limit)")
        raise DatabaseUnavailable(f"cannot connect to {mask_url(url)}: {message}") from None


def _interruptible(open_: Callable[[], T], close: Callable[[T], object]) -> T:
    """`open_()` in a helper thread while this one waits, so that Ctrl-C interrupts the wait
    at once (a C call in this thread would hold the signal back until it returns). What an
    abandoned call opens later is closed."""
    lock = threading.Lock()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            value = open_()
        except BaseException as error:  # handed to the waiting thread
            outcome["error"] = error
        else:
            with lock:
                if outcome.get("abandoned"):
                    _close_quietly(close, value)
                else:
                    outcome["value"] = value
        finally:
            done.set()

    threading.Thread(target=run, name="engine-driver-call", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except BaseException:
        with lock:
            outcome["abandoned"] = True
            if "value" in outcome:
                _close_quietly(close, outcome["value"])
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _close_quietly(close: Callable[[T], object], value: T) -> None:
    try:
        close(value)
    except Exception:  # an abandoned connection: nobody is left to tell
        log.debug("could not close an abandoned connection", exc_info=True)


@contextmanager
def transaction(
    conn: Connection, *, lock_timeout_ms: int, statement_timeout_ms: int
) -> Iterator[Cursor]:
    """One transaction with `SET LOCAL` timeouts; commits on success, rolls back on any error."""
    cursor = conn.cursor()
    try:
        # SET takes no bind parameters; both values are validated ints.
        cursor.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        cursor.execute(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
        yield cursor
        conn.commit()
    except BaseException:
        _rollback_quietly(conn)
        raise
    finally:
        cursor.close()


@contextmanager
def translated_errors(url: str) -> Iterator[None]:
    """Turn driver errors into engine errors: transient ones, missing tables, lost connections."""
    try:
        yield
    except adbc_driver_manager.Error as error:
        raise translate(error, url) from error


def cancelled_by_user(error: BaseException) -> bool:
    """Whether a cancel request stopped the statement: Ctrl-C during a call on the main thread
    (ADBC sends libpq's cancel) or `pg_cancel_backend`. PostgreSQL rolled the transaction back."""
    return (isinstance(error, adbc_driver_manager.Error)
            and getattr(error, "sqlstate", None) == "57014" and "user request" in str(error))


def as_engine_error(error: BaseException, url: str) -> BaseException:
    """A driver error translated (as `translated_errors` does); any other error unchanged."""
    return translate(error, url) if isinstance(error, adbc_driver_manager.Error) else error


def translate(error: adbc_driver_manager.Error, url: str) -> EngineError:
    state = getattr(error, "sqlstate", None) or ""
    message = _first_line(error)
    if cancelled_by_user(error):
        return Interrupted("the statement in progress was cancelled (Ctrl-C) and rolled back")
    if state in TRANSIENT_SQLSTATES or state.startswith("08"):
        return TransientDatabaseError(f"{mask_url(url)}: {message} (SQLSTATE {state})")
    if state in ("42P01", "42703"):
        return SchemaError(f"{message}; run `engine db init`")
    if state == "42501":  # insufficient privilege: name the object, the role and the GRANT
        import os
        import re

        parts = urlsplit(url)
        role = parts.username or os.environ.get("PGUSER") or "the connecting role"
        text = str(error)  # the server's message may follow the driver's first line
        found = re.search(r"permission denied for (table|sequence|schema|database|relation) "
                          r"\"?([\w.$-]+)\"?", text)
        owner = re.search(r"must be owner of (\w+) \"?([\w.$-]+)\"?", text)
        if owner:
            return SchemaError(f"permission denied on {owner[1]} {owner[2]} for role {role}: only "
                               "its owner may do this")
        if not found:
            return SchemaError(f"permission denied for role {role}: {message}")
        kind, name = ("table" if found[1] == "relation" else found[1]), found[2]
        grant = {
            "sequence": f"GRANT USAGE ON SEQUENCE {name} TO {role}",
            "schema": f"GRANT USAGE, CREATE ON SCHEMA {name} TO {role}",
            "database": f"GRANT CONNECT, CREATE ON DATABASE {name} TO {role}",
        }.get(kind)
        if grant is None:  # a table: the source is only read, the rest is written
            rights = "SELECT" if name.split(".")[-1] == "curtailment_records" else (
                "SELECT, INSERT, UPDATE, DELETE")
            grant = f"GRANT {rights} ON {name} TO {role}"
        return SchemaError(f"permission denied on {kind} {name} for role {role}: "
                           f"`{grant}` (see README, Connecting to production)")
    if isinstance(error, adbc_driver_manager.OperationalError) and not state:
        return DatabaseUnavailable(f"lost the connection to {mask_url(url)}: {message}")
    return EngineError(f"database error: {message} (SQLSTATE {state or 'none'})")


def fetch_all(cursor: Cursor, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cursor.execute(sql, params or None)
    return cursor.fetchall()


def execute(cursor: Cursor, sql: str, params: tuple[Any, ...] = ()) -> int:
    """Run one statement; return the rows it affected (-1 when the driver cannot tell)."""
    cursor.execute(sql, params or None)
    return cursor.rowcount


def literal(value: date | int) -> str:
    """Render a typed value for connectorx, which cannot bind parameters."""
    if isinstance(value, bool):
        raise TypeError("booleans are not rendered")
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, int):
        return str(int(value))
    raise TypeError(f"only dates and ints are rendered into SQL, not {type(value).__name__}")


def read_arrow(url: str, sql: str) -> pa.Table:
    """Run a read-only query through connectorx and return an Arrow table.

    Call it only after `connect` succeeded once: connectorx retries a refused connection for
    half a minute before it gives up (each try bounded by the URL's `connect_timeout`). The
    read runs in a helper thread, so Ctrl-C in the main thread is not held back until it ends.
    """
    url = check_url(url)
    try:
        return _interruptible(lambda: cx.read_sql(url, sql, return_type="arrow"),
                              lambda table: None)
    except RuntimeError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        message = dsn.scrub(message, url)
        if "does not exist" in message:
            raise SchemaError(f"{message}; run `engine db init`") from None
        raise TransientDatabaseError(f"read from {mask_url(url)} failed: {message}") from None


def _first_line(error: BaseException) -> str:
    text = str(error)
    for prefix in ("IO: ", "INVALID_ARGUMENT: ", "INVALID_DATA: ", "NOT_FOUND: ", "INTERNAL: "):
        text = text.removeprefix(prefix)
    text = text.removeprefix("[libpq] ")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _rollback_quietly(conn: Connection) -> None:
    try:
        conn.rollback()
    except adbc_driver_manager.Error:
        log.debug("rollback failed; the connection is gone", exc_info=True)


def resolve_url(database_url: str | None, data_dir: Path, *,
                connect_timeout_s: float | None = None, create: bool = True) -> str:
    """The configured URL (or key=value string, as a URL), or the embedded server's under
    `data_dir`, started if needed; with `connect_timeout_s` as its `connect_timeout`.

    Without `create`, a data directory that holds no embedded cluster yet raises
    `DatabaseUnavailable` instead of creating one (a read-only command on a mistyped
    ENGINE_DATA_DIR must not start a new server). Raises `EnvironmentProblem` when the data
    directory cannot hold the cluster.
    """
    if database_url:
        return check_url(database_url, connect_timeout_s=connect_timeout_s)
    from engine.store.embedded import EmbeddedServer

    pgdata = data_dir / "postgres"
    if data_dir.exists() and not data_dir.is_dir():
        raise EnvironmentProblem(f"the data directory {data_dir} is not a directory "
                                 "(ENGINE_DATA_DIR names a file)")
    if not create and not (pgdata / "PG_VERSION").is_file():
        raise DatabaseUnavailable(
            f"there is no embedded database in {pgdata} yet; run `engine demo` or `engine db "
            "init` to create one, or set ENGINE_DATABASE_URL (is ENGINE_DATA_DIR right?)")
    try:
        status = EmbeddedServer(pgdata).ensure_running()
    except OSError as error:
        raise EnvironmentProblem(f"cannot set up the embedded PostgreSQL in {pgdata}: "
                                 f"{error.strerror or error}") from None
    log.info("using the embedded PostgreSQL in %s on 127.0.0.1:%s", status.pgdata, status.port)
    assert status.url is not None
    return check_url(status.url, connect_timeout_s=connect_timeout_s)
