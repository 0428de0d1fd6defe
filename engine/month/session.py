"""A session: what every month of a run shares (one connection, the models, the data layout),
and the month's advisory lock held for the length of a reconciliation."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from engine.errors import EngineError, MonthBusy
from engine.month import locks
from engine.months import Month
from engine.store import db, schema
from engine.store.config import MinerModel, Settings, load_miner_models
from engine.store.paths import Layout

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What every month of a run shares: one connection, the models, the data layout."""

    settings: Settings
    url: str
    conn: db.Connection
    models: tuple[MinerModel, ...]
    unique_key: bool

    @property
    def layout(self) -> Layout:
        return Layout(self.settings.data_dir)

    @property
    def read_url(self) -> str:
        """The URL connectorx reads with: the engine's lock and statement timeouts apply."""
        return db.with_timeouts(self.url, lock_timeout_ms=self.settings.lock_timeout_ms,
                                statement_timeout_ms=self.settings.statement_timeout_ms)

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
            schema.check_schema(cursor)
            unique_key = schema.has_unique_key(cursor)
        yield Session(settings, url, conn, models, unique_key)


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
