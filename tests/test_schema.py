"""`engine db init`: idempotent, the production tables as production has them, the key index."""

from __future__ import annotations

import pytest

from engine.errors import SchemaError
from engine.store import db, schema
from tests.conftest import execute

PRODUCTION_COLUMNS = {
    "curtailment_records": [
        ("id", "integer", "NO"), ("settlement_date", "date", "NO"),
        ("settlement_period", "integer", "NO"), ("farm_id", "text", "NO"),
        ("lead_party_name", "text", "YES"), ("volume", "numeric", "NO"),
        ("payment", "numeric", "NO"), ("original_price", "numeric", "NO"),
        ("final_price", "numeric", "NO"), ("so_flag", "boolean", "YES"),
        ("cadl_flag", "boolean", "YES"), ("created_at", "timestamp without time zone", "YES"),
    ],
    "historical_bitcoin_calculations": [
        ("id", "integer", "NO"), ("settlement_date", "date", "NO"),
        ("settlement_period", "integer", "NO"), ("farm_id", "text", "NO"),
        ("miner_model", "text", "NO"), ("bitcoin_mined", "numeric", "NO"),
        ("difficulty", "numeric", "NO"), ("calculated_at", "timestamp without time zone", "YES"),
    ],
}


def columns(url: str, table: str) -> list[tuple]:
    return execute(url, """SELECT column_name::text, data_type::text, is_nullable::text
                           FROM information_schema.columns WHERE table_name = $1
                           ORDER BY ordinal_position""", (table,))


def test_init_creates_the_production_tables_as_production_has_them(database_url):
    for table, expected in PRODUCTION_COLUMNS.items():
        assert columns(database_url, table) == expected


def test_init_creates_every_table_and_both_indexes(database_url):
    tables = {r[0] for r in execute(database_url, "SELECT tablename::text FROM pg_tables "
                                                  "WHERE schemaname = 'public'")}
    assert tables == set(schema.PRODUCTION_TABLES)
    own = {r[0] for r in execute(database_url, "SELECT tablename::text FROM pg_tables "
                                               "WHERE schemaname = 'engine'")}
    assert own == set(schema.ENGINE_TABLES)
    indexes = {r[0] for r in execute(database_url, "SELECT indexname::text FROM pg_indexes")}
    assert {schema.KEY_INDEX, schema.SOURCE_DATE_INDEX} <= indexes


def test_init_twice_changes_nothing(database_url):
    execute(database_url, """INSERT INTO bitcoin_difficulty VALUES ('2024-01-01', 1)""")

    again = schema.init_schema(database_url)

    assert again.created_tables == () and again.created_indexes == ()
    assert again.unique_key == "present"
    assert execute(database_url, "SELECT count(*) FROM bitcoin_difficulty") == [(1,)]


def test_duplicates_block_the_unique_index_and_are_counted(database_url):
    execute(database_url, f"DROP INDEX {schema.KEY_INDEX}")
    row = """INSERT INTO historical_bitcoin_calculations (settlement_date, settlement_period,
             farm_id, miner_model, bitcoin_mined, difficulty) VALUES ('2023-01-01', 1, 'A', 'S9', 1, 1)"""
    for _ in range(3):
        execute(database_url, row)

    result = schema.init_schema(database_url)

    assert (result.unique_key, result.duplicate_keys, result.surplus_rows) == ("blocked", 1, 2)
    assert execute(database_url, "SELECT count(*) FROM historical_bitcoin_calculations") == [(3,)]
    indexes = {r[0] for r in execute(database_url, "SELECT indexname::text FROM pg_indexes")}
    assert schema.LOOKUP_INDEX in indexes and schema.KEY_INDEX not in indexes


def test_the_unique_index_is_built_once_the_duplicates_are_gone(database_url):
    execute(database_url, f"DROP INDEX {schema.KEY_INDEX}")
    row = """INSERT INTO historical_bitcoin_calculations (settlement_date, settlement_period,
             farm_id, miner_model, bitcoin_mined, difficulty) VALUES ('2023-01-01', 1, 'A', 'S9', 1, 1)"""
    execute(database_url, row)
    execute(database_url, row)
    schema.init_schema(database_url)
    execute(database_url, "DELETE FROM historical_bitcoin_calculations WHERE id = 2")

    result = schema.init_schema(database_url)

    assert result.unique_key == "created"
    indexes = {r[0] for r in execute(database_url, "SELECT indexname::text FROM pg_indexes")}
    assert schema.KEY_INDEX in indexes and schema.LOOKUP_INDEX not in indexes


def test_init_adds_the_worker_column_to_a_runs_table_made_before_it(database_url):
    execute(database_url, "ALTER TABLE engine.reconciliation_runs DROP COLUMN worker")
    with db.connect(database_url) as conn, \
            db.transaction(conn, lock_timeout_ms=5000, statement_timeout_ms=30000) as cursor, \
            pytest.raises(SchemaError, match=r"lacks column\(s\) worker"):
        schema.check_schema(cursor)

    schema.init_schema(database_url)

    assert ("worker", "text", "YES") in columns(database_url, "reconciliation_runs")
