"""A session: what every month of a run shares (one connection, the models, the data layout),
and the month's advisory lock held for the length of a reconciliation."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError, MonthBusy
from engine.month import locks
from engine.months import Month
from engine.store import db, libpq, schema
from engine.store.config import MinerModel, Settings, load_miner_models
from engine.store.paths import Layout

log = logging.getLogger(__name__)

_told_slower: set[str] = set()


@dataclass
class Session:
    """What every month of a run shares: one connection, the models, the data layout."""

    settings: Settings
    url: str
    conn: db.Connection
    models: tuple[MinerModel, ...]
    unique_key: bool
    database_id: str = "unknown"  # which database this is: see `database_identity`

    @property
    def layout(self) -> Layout:
        return Layout(self.settings.data_dir)

    @property
    def engine_schema(self) -> str:
        """The schema of the engine's own tables."""
        return self.settings.schema

    @property
    def undo_dir(self) -> Path:
        """Where this database's undo images live: one folder per database, so two databases
        sharing a data/ folder never overwrite each other's run of the same number."""
        return self.settings.data_dir / "undo" / self.database_id

    @property
    def read_url(self) -> str:
        """The URL connectorx reads with: the engine's lock and statement timeouts apply, and
        the password and sslmode libpq would take from its own settings (a secret: mask it)."""
        return libpq.for_connectorx(db.with_timeouts(
            self.url, lock_timeout_ms=self.settings.lock_timeout_ms,
            statement_timeout_ms=self.settings.statement_timeout_ms))

    @contextmanager
    def transaction(self) -> Iterator[db.Cursor]:
        with db.transaction(self.conn, lock_timeout_ms=self.settings.lock_timeout_ms,
                            statement_timeout_ms=self.settings.statement_timeout_ms) as cursor:
            yield cursor


@contextmanager
def open_session(settings: Settings, url: str | None = None) -> Iterator[Session]:
    """Connect (starting the embedded server if no URL is configured) and check the schema.

    Raises `DatabaseUnavailable`, `SchemaError` or `InputError` (a bad miner models file).
    """
    models = load_miner_models(settings.miner_models_file)
    url = url or db.resolve_url(settings.database_url, settings.data_dir,
                                connect_timeout_s=settings.connect_timeout_s)
    with db.connect(url) as conn, db.translated_errors(url):
        with db.transaction(conn, lock_timeout_ms=settings.lock_timeout_ms,
                            statement_timeout_ms=settings.statement_timeout_ms) as cursor:
            schema.check_schema(cursor, settings.schema)
            unique_key = schema.has_unique_key(cursor)
            database_id = database_identity(cursor)
        if not unique_key and (where := db.mask_url(url)) not in _told_slower:
            _told_slower.add(where)
            log.warning("note: %s has no unique index on its key, so each merge locks it against "
                        "other writers and checks NOT EXISTS, which is slower (`engine db init` "
                        "says how to add it)", schema.CALCULATIONS)
        yield Session(settings, url, conn, models, unique_key, database_id)


# The cluster's system identifier names a server for good (it survives restarts and moves);
# a role that may not read it falls back on the server's address and port.
IDENTITY = """
SELECT current_database(),
       CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier::text FROM pg_control_system()) END,
       host(inet_server_addr()), inet_server_port()
"""


def database_identity(cursor: db.Cursor) -> str:
    """A file-name-safe name of this database on this server, e.g. `7413…-engine`."""
    name, system_id, host, port = db.fetch_all(cursor, IDENTITY)[0]
    server = system_id or f"{host or 'local'}_{port or ''}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{server}-{name}")


@contextmanager
def month_lock(session: Session, month: Month) -> Iterator[None]:
    """Hold the month's advisory lock for the run; raise `MonthBusy` if another process has it."""
    with db.translated_errors(session.url), session.transaction() as cursor:
        if not locks.try_lock_month(cursor, month):
            raise MonthBusy(month, locks.lock_holder(cursor, month))
    try:
        yield
    finally:
        try:
            with db.translated_errors(session.url), session.transaction() as cursor:
                locks.unlock_month(cursor, month)
        except EngineError:  # the connection is gone, and the lock with it
            log.debug("could not release the lock of %s", month, exc_info=True)
