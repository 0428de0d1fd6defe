"""The database schema: idempotent creation, the key index, and a check of what exists."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from importlib.resources import files

from engine.store import db

log = logging.getLogger(__name__)

CALCULATIONS = "historical_bitcoin_calculations"
KEY_COLUMNS = ("settlement_date", "settlement_period", "farm_id", "miner_model")
KEY_INDEX = "historical_bitcoin_calculations_key"
# Used for the month's range reads while duplicates keep the unique index from being built.
LOOKUP_INDEX = "historical_bitcoin_calculations_key_lookup"
SOURCE_DATE_INDEX = "curtailment_records_settlement_date_idx"

TABLES = (
    "curtailment_records", CALCULATIONS, "bitcoin_daily_summaries", "bitcoin_monthly_summaries",
    "bitcoin_yearly_summaries", "bitcoin_difficulty", "reconciliation_runs",
    "reconciliation_progress", "reconciliation_backfills",
)

REQUIRED_COLUMNS = {
    "curtailment_records": {"id", "settlement_date", "settlement_period", "farm_id", "volume"},
    CALCULATIONS: {"id", *KEY_COLUMNS, "bitcoin_mined", "difficulty", "calculated_at"},
    "bitcoin_difficulty": {"settlement_date", "difficulty"},
    # The engine's own tables, with the newest columns it writes (`engine db init` adds them).
    "reconciliation_runs": {"backfill_id", "causes", "repairs", "summaries", "undo_of", "undone_by"},
    "reconciliation_progress": {"source_records", "last_error_kind", "last_error_at", "retries"},
    "reconciliation_backfills": {"id", "throttle"},
}

_EXISTING_TABLES = """
SELECT table_name::text FROM information_schema.tables
WHERE table_schema = current_schema() AND table_name = ANY($1)
"""
_EXISTING_COLUMNS = """
SELECT table_name::text, column_name::text FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = ANY($1)
"""
_VALID_INDEX = """
SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace
"""
_DUPLICATES = f"""
SELECT count(*), coalesce(sum(n - 1), 0) FROM (
    SELECT count(*) AS n FROM {CALCULATIONS}
    GROUP BY {", ".join(KEY_COLUMNS)} HAVING count(*) > 1
) d
"""
# CONCURRENTLY: building an index on a live production table must not block its writers.
_CREATE_KEY_INDEX = (
    f"CREATE UNIQUE INDEX CONCURRENTLY {KEY_INDEX} ON {CALCULATIONS} ({', '.join(KEY_COLUMNS)})"
)
_CREATE_LOOKUP_INDEX = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {LOOKUP_INDEX} "
    f"ON {CALCULATIONS} ({', '.join(KEY_COLUMNS)})"
)
_CREATE_SOURCE_DATE_INDEX = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {SOURCE_DATE_INDEX} "
    "ON curtailment_records (settlement_date)"
)


@dataclass(frozen=True)
class InitResult:
    """What `init_schema` found and did. `unique_key` is `present`, `created` or `blocked`."""

    created_tables: tuple[str, ...]
    created_indexes: tuple[str, ...]
    unique_key: str
    duplicate_keys: int = 0
    surplus_rows: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def init_schema(url: str) -> InitResult:
    """Create every missing table and index; never drop or rewrite data.

    Where duplicate keys prevent the unique index, count them and build a plain lookup index
    instead (`unique_key == "blocked"`); the load then guards against duplicates with a lock.
    """
    with db.connect(url, autocommit=True) as conn, db.translated_errors(url), conn.cursor() as cursor:
        before = _existing_tables(cursor)
        cursor.executescript(files("engine.store").joinpath("schema.sql").read_text())
        check_schema(cursor)
        created_indexes = []
        if not _index_valid(cursor, SOURCE_DATE_INDEX):
            _build_index(cursor, SOURCE_DATE_INDEX, _CREATE_SOURCE_DATE_INDEX)
            created_indexes.append(SOURCE_DATE_INDEX)
        unique_key, duplicates, surplus = _ensure_key_index(cursor, created_indexes)
    return InitResult(
        created_tables=tuple(t for t in TABLES if t not in before),
        created_indexes=tuple(created_indexes),
        unique_key=unique_key,
        duplicate_keys=duplicates,
        surplus_rows=surplus,
    )


def check_schema(cursor: db.Cursor) -> None:
    """Raise `SchemaError` naming every missing table or column the engine reads or writes."""
    from engine.errors import SchemaError

    tables = list(REQUIRED_COLUMNS)
    present: dict[str, set[str]] = {t: set() for t in tables}
    for table, column in db.fetch_all(cursor, _EXISTING_COLUMNS, (tables,)):
        present[table].add(column)
    problems = []
    for table, needed in REQUIRED_COLUMNS.items():
        if not present[table]:
            problems.append(f"table {table} is missing")
        elif missing := needed - present[table]:
            problems.append(f"{table} lacks column(s) {', '.join(sorted(missing))}")
    if problems:
        raise SchemaError("; ".join(problems) + "; run `engine db init`")


def has_unique_key(cursor: db.Cursor) -> bool:
    """True when the unique index on the calculations key exists and is valid."""
    return _index_valid(cursor, KEY_INDEX)


def _ensure_key_index(cursor: db.Cursor, created: list[str]) -> tuple[str, int, int]:
    if _index_valid(cursor, KEY_INDEX):
        return "present", 0, 0
    duplicates, surplus = (int(v) for v in db.fetch_all(cursor, _DUPLICATES)[0])
    if duplicates == 0:
        _build_index(cursor, KEY_INDEX, _CREATE_KEY_INDEX)
        created.append(KEY_INDEX)
        # The unique index serves every lookup the plain one did.
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {LOOKUP_INDEX}")
        return "created", 0, 0
    log.warning("%d duplicated keys (%d surplus rows) prevent the unique index", duplicates, surplus)
    if not _index_valid(cursor, LOOKUP_INDEX):
        _build_index(cursor, LOOKUP_INDEX, _CREATE_LOOKUP_INDEX)
        created.append(LOOKUP_INDEX)
    return "blocked", duplicates, surplus


def _build_index(cursor: db.Cursor, name: str, statement: str) -> None:
    # A failed concurrent build leaves an invalid index behind; it is ours to drop.
    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    cursor.execute(statement)


def _index_valid(cursor: db.Cursor, name: str) -> bool:
    rows = db.fetch_all(cursor, _VALID_INDEX, (name,))
    return bool(rows and rows[0][0])


def _existing_tables(cursor: db.Cursor) -> set[str]:
    return {row[0] for row in db.fetch_all(cursor, _EXISTING_TABLES, (list(TABLES),))}
