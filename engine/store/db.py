"""Connections, transactions and timeouts. Knows no domain table.

Writes go through ADBC (libpq; bulk ingest is COPY). Bulk reads go through connectorx, which
cannot bind parameters: only typed values are rendered into its SQL, by `literal`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import connectorx as cx
import pyarrow as pa
from adbc_driver_manager.dbapi import Connection, Cursor

from engine.errors import DatabaseUnavailable, EngineError, InputError, Interrupted, SchemaError

log = logging.getLogger(__name__)

# SQLSTATEs of failures that are worth trying again: serialization failure, deadlock, lock
# timeout, statement timeout / cancel, shutdown and connection loss.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})


class TransientDatabaseError(EngineError):
    """A failure that may pass if tried again (lock or statement timeout, lost connection…)."""


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***` and without its parameters (which may
    hold a password too), safe to print and to store."""
    parts = urlsplit(url)._replace(query="", fragment="")
    if parts.password is None:
        return urlunsplit(parts)
    user = parts.username or ""
    host = parts.hostname or ""
    try:
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:  # an invalid port: leave it out
        pass
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def with_timeouts(url: str, *, lock_timeout_ms: int, statement_timeout_ms: int) -> str:
    """`url` with the session timeouts in its `options` parameter, so that connectorx reads
    give up behind a lock as the engine's own transactions do (`SET LOCAL` cannot reach them)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join(v for k, v in query if k == "options")
    options = (f"{options} -c lock_timeout={lock_timeout_ms} "
               f"-c statement_timeout={statement_timeout_ms}").strip()
    query = [(k, v) for k, v in query if k != "options"] + [("options", options)]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def check_url(url: str) -> str:
    """Return `url` if it is a TCP `postgresql://` URL; raise `InputError` naming the problem."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise InputError(f"database URL {mask_url(url)!r} must start with postgresql://")
    if not parts.hostname:
        raise InputError(
            f"database URL {mask_url(url)!r} has no host; connectorx needs a TCP host, "
            "not a Unix socket"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InputError(f"database URL {mask_url(url)!r} has an invalid port") from None
    return url


def connect(url: str, *, autocommit: bool = False) -> Connection:
    """Open an ADBC connection. Raises `DatabaseUnavailable` with a masked URL."""
    check_url(url)
    try:
        return adbc.connect(url, autocommit=autocommit)
    except adbc_driver_manager.Error as error:
        raise DatabaseUnavailable(
            f"cannot connect to {mask_url(url)}: {_first_line(error)}"
        ) from None


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
    half a minute before it gives up.
    """
    try:
        return cx.read_sql(url, sql, return_type="arrow")
    except RuntimeError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
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


def resolve_url(database_url: str | None, data_dir: Path) -> str:
    """The configured URL, or the embedded server's (started if needed) under `data_dir`."""
    if database_url:
        return check_url(database_url)
    from engine.store.embedded import EmbeddedServer

    status = EmbeddedServer(data_dir / "postgres").ensure_running()
    log.info("using the embedded PostgreSQL in %s on 127.0.0.1:%s", status.pgdata, status.port)
    assert status.url is not None
    return status.url
