"""Fixtures: a real PostgreSQL (the embedded one, or ENGINE_TEST_DATABASE_URL) and a fresh
database per test."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import pytest

from engine.store import db, schema
from engine.store.config import Settings
from engine.store.embedded import EmbeddedServer

PASSWORD_ROLE = "engine_password_probe"


@pytest.fixture(scope="session")
def server_url() -> str:
    """A URL to a server where tests may create databases. Started once, reused later."""
    if url := os.environ.get("ENGINE_TEST_DATABASE_URL"):
        return url
    root = Path(tempfile.gettempdir()) / f"engine-tests-{os.getuid()}"
    root.mkdir(mode=0o755, exist_ok=True)
    root.chmod(0o755)  # the server may run as `nobody`
    server = EmbeddedServer(root / "postgres")
    status = server.ensure_running()
    _require_password_for_probe_role(server.pgdata, status.url)
    assert status.url is not None
    return status.url


@contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """A new database with the production tables (as the embedded server has them: created by
    the engine, with their indexes) and the engine's schema; dropped at the end. Its
    search_path ends with the engine's schema, so a test's own SQL may name the engine's
    tables unqualified (the engine itself always qualifies them)."""
    name = f"engine_test_{uuid.uuid4().hex[:12]}"
    with adbc.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
        cursor.execute(f'ALTER DATABASE {name} SET search_path = "$user", public, '
                       f"{schema.DEFAULT_SCHEMA}")
    url = with_database(server_url, name)
    try:
        schema.init_schema(url, own_database=True)
        yield url
    finally:
        with adbc.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A new database (`new_database`) for the test."""
    with new_database(server_url) as url:
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path / "data")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def insert_curtailment(url: str, rows: list[tuple[str, int, str, str]]) -> None:
    """Insert (date, period, farm, volume) curtailment records; other columns are zero."""
    frame = pl.DataFrame(
        {
            "settlement_date": [date.fromisoformat(r[0]) for r in rows],
            "settlement_period": [r[1] for r in rows],
            "farm_id": [r[2] for r in rows],
            "volume": [Decimal(r[3]) for r in rows],
        },
        schema={"settlement_date": pl.Date, "settlement_period": pl.Int32,
                "farm_id": pl.String, "volume": pl.Decimal(38, 10)},
    ).with_columns(payment=pl.lit(Decimal(0), pl.Decimal(38, 10)),
                   original_price=pl.lit(Decimal(0), pl.Decimal(38, 10)),
                   final_price=pl.lit(Decimal(0), pl.Decimal(38, 10)))
    _ingest(url, "curtailment_records", frame)


def insert_difficulty(url: str, values: dict[str, str]) -> None:
    frame = pl.DataFrame(
        {"settlement_date": [date.fromisoformat(d) for d in values],
         "difficulty": [Decimal(v) for v in values.values()]},
        schema={"settlement_date": pl.Date, "difficulty": pl.Decimal(38, 10)},
    )
    _ingest(url, "bitcoin_difficulty", frame, schema.DEFAULT_SCHEMA)


def execute(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement in its own transaction; return its rows (if any)."""
    with db.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(sql, params or None)
        rows = cursor.fetchall() if cursor.description else []
        conn.commit()
    return rows


def calculations(url: str) -> list[tuple]:
    """Every calculation row as (date, period, farm, model, bitcoin text, difficulty text)."""
    return execute(url, """
        SELECT settlement_date, settlement_period, farm_id, miner_model,
               bitcoin_mined::text, difficulty::text
        FROM historical_bitcoin_calculations ORDER BY 1, 2, 3, 4, id""")


def _ingest(url: str, table: str, frame: pl.DataFrame, db_schema: str | None = None) -> None:
    with db.connect(url) as conn, conn.cursor() as cursor:
        cursor.adbc_ingest(table, frame.to_arrow(), mode="append", db_schema_name=db_schema)
        conn.commit()


def _require_password_for_probe_role(pgdata: Path, url: str | None) -> None:
    """Let one role log in only with a password, so a wrong password can be tested."""
    hba = pgdata / "pg_hba.conf"
    line = f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
    if line not in hba.read_text():
        hba.write_text(line + hba.read_text())
    assert url is not None
    with adbc.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = $1", (PASSWORD_ROLE,))
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'right-password'")
        cursor.execute("SELECT pg_reload_conf()")
        cursor.fetchall()
