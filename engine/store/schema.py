"""The database schema: `engine db init` (the engine's schema and tables, what it finds that
is not its own, the production tables and their indexes) and the check every session makes.

The names (the schema, the tables, `sql` to qualify a statement) are in `engine.store.names`
and are re-exported here; `ownership` tells the engine's tables from others, `indexes`
creates or proposes the production tables' indexes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from engine.errors import SchemaError
from engine.store import db, ownership
from engine.store.indexes import (
    CREATE_KEY_INDEX,
    CREATE_LOOKUP_INDEX,
    CREATE_SOURCE_DATE_INDEX,
    IndexPlan,
    has_source_date_index,
    has_unique_key,
)
from engine.store.names import (
    CALCULATIONS,
    DEFAULT_SCHEMA,
    ENGINE_TABLES,
    KEY_COLUMNS,
    KEY_INDEX,
    LOOKUP_INDEX,
    PLACEHOLDER,
    PRODUCTION_TABLES,
    SOURCE_DATE_INDEX,
    TABLES,
    check_name,
    mark,
    quoted,
    sections,
    sql,
    table,
)
from engine.store.ownership import FoundTable

__all__ = [
    "CALCULATIONS", "CREATE_KEY_INDEX", "CREATE_LOOKUP_INDEX", "CREATE_SOURCE_DATE_INDEX",
    "DEFAULT_SCHEMA", "ENGINE_TABLES", "KEY_COLUMNS", "KEY_INDEX", "LOOKUP_INDEX", "PLACEHOLDER",
    "PRODUCTION_TABLES", "REQUIRED_COLUMNS", "SOURCE_DATE_INDEX", "TABLES", "FoundTable",
    "InitResult", "check_name", "check_schema", "has_source_date_index", "has_unique_key",
    "init_schema", "mark", "quoted", "sections", "sql", "table",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = {
    "curtailment_records": {"id", "settlement_date", "settlement_period", "farm_id", "volume"},
    CALCULATIONS: {"id", *KEY_COLUMNS, "bitcoin_mined", "difficulty", "calculated_at"},
    "bitcoin_difficulty": {"settlement_date", "difficulty"},
    # The engine's own tables, with the newest columns it writes (`engine db init` adds them).
    "reconciliation_runs": {"backfill_id", "causes", "repairs", "summaries", "undo_of", "undone_by",
                            "snapshot", "worker"},
    "reconciliation_progress": {"month", "source_records", "last_error_kind", "last_error_at",
                                "retries"},
    "reconciliation_backfills": {"id", "throttle"},
    "reconciliation_fingerprints": {"kind", "settlement_date", "month", "rows", "hash"},
}

_SCHEMA_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"
_CURRENT_SCHEMA = "SELECT current_schema()::text"
# The columns of a table as a query names it (resolved through the search_path).
_COLUMNS = """
SELECT a.attname::text FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
"""
_RESOLVES = "SELECT to_regclass($1) IS NOT NULL"


@dataclass(frozen=True)
class InitResult:
    """What `init_schema` found and did.

    `unique_key` is `present`, `created`, `blocked` (duplicates; the lookup index instead) or
    `missing` (not asked to create it, or not allowed to: `proposed` and `notes` say which).
    `moved` lists the tables of an earlier layout moved into the schema, `foreign` the tables
    under names the engine uses that are not its own (left alone), `proposed` the statements
    `--create-indexes` would run.
    """

    created_tables: tuple[str, ...]
    created_indexes: tuple[str, ...]
    unique_key: str
    duplicate_keys: int = 0
    surplus_rows: int = 0
    engine_schema: str = DEFAULT_SCHEMA
    moved: tuple[str, ...] = ()
    foreign: tuple[FoundTable, ...] = ()
    proposed: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def init_schema(url: str, *, engine_schema: str = DEFAULT_SCHEMA, own_database: bool = False,
                create_indexes: bool = False, create_tables: bool = False) -> InitResult:
    """Create the engine's schema and its missing tables; never drop or rewrite data.

    - Tables an earlier version created in `public`, proven the engine's by their columns, are
      moved into the schema with their rows (`moved`); other tables under the engine's names
      are reported (`foreign`) and left alone.
    - The production tables are created only where missing and `own_database` (the embedded
      server, the demo) or `create_tables`; otherwise a missing one raises `SchemaError`.
    - Indexes on the production tables (the unique key, the source's date) are created when
      `create_indexes`, `own_database`, or the engine created the table; otherwise they are
      `proposed`. Where duplicate keys prevent the unique index, they are counted and a plain
      lookup index is built instead (`unique_key == "blocked"`); the load then guards
      against duplicates with a lock. A role that may not create an index gets a note.

    Raises `InputError` for a bad schema name, `SchemaError` when something the engine needs
    is missing or is not its own, `DatabaseUnavailable` when the database cannot be reached.
    """
    check_name(engine_schema)
    created: list[str] = []
    with db.connect(url, autocommit=True) as conn, db.translated_errors(url), conn.cursor() as cursor:
        shapes = ownership.engine_shapes(url, engine_schema)
        survey = ownership.survey(cursor)
        home = db.fetch_all(cursor, _CURRENT_SCHEMA)[0][0] or "public"
        mine = {(s, n) for s, n, comment, *_ in survey if comment == mark(n)}
        absent = [n for n in PRODUCTION_TABLES if not db.fetch_all(cursor, _RESOLVES, (n,))[0][0]]
        if absent and not (own_database or create_tables):
            raise SchemaError(
                f"table(s) {', '.join(absent)} missing: the engine creates production tables only "
                "on its embedded server; check that ENGINE_DATABASE_URL names the production "
                "database (its search_path included), or create them with "
                "`engine db init --create-tables`")
        if not db.fetch_all(cursor, _SCHEMA_EXISTS, (engine_schema,))[0][0]:
            cursor.execute(f"CREATE SCHEMA {quoted(engine_schema)}")
            log.info("created schema %s", engine_schema)
        moved_from, moved = ownership.move_earlier_layout(cursor, survey, shapes, engine_schema, home, mine)
        statements = sections(engine_schema)
        for name in ENGINE_TABLES:
            if (engine_schema, name) in mine:
                continue
            if any(s == engine_schema and n == name for s, n, *_ in survey):
                raise SchemaError(
                    f"{engine_schema}.{name} exists but is not the engine's (it has no "
                    f"'{mark(name)}' comment); the engine leaves it alone: set ENGINE_SCHEMA to "
                    "another schema")
            _create(cursor, statements[name], f"{quoted(engine_schema)}.{name}", name)
            created.append(f"{engine_schema}.{name}")
        owned_production = set()
        for name in PRODUCTION_TABLES:
            if name in absent:
                _create(cursor, statements[name], name, name)
                created.append(name)
                owned_production.add(name)
            elif (home, name) in mine:
                owned_production.add(name)
        if created or moved or _lacks_columns(cursor, engine_schema):
            cursor.executescript(statements["upgrade"])
        check_schema(cursor, engine_schema)
        foreign = ownership.foreign(cursor, survey, engine_schema, mine | moved_from)
        indexes = IndexPlan(cursor, allowed=create_indexes or own_database)
        indexes.source_date(allowed_here=CALCULATIONS in owned_production
                            or "curtailment_records" in owned_production)
        unique_key, duplicates, surplus = indexes.unique_key(
            allowed_here=CALCULATIONS in owned_production)
    return InitResult(
        created_tables=tuple(created),
        created_indexes=tuple(indexes.created),
        unique_key=unique_key,
        duplicate_keys=duplicates,
        surplus_rows=surplus,
        engine_schema=engine_schema,
        moved=tuple(moved),
        foreign=tuple(foreign),
        proposed=tuple(indexes.proposed),
        notes=tuple(indexes.notes),
    )


def check_schema(cursor: db.Cursor, engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Raise `SchemaError` naming every missing table or column the engine reads or writes."""
    problems = []
    for name, needed in REQUIRED_COLUMNS.items():
        qualified = f"{quoted(engine_schema)}.{name}" if name in ENGINE_TABLES else name
        shown = f"{engine_schema}.{name}" if name in ENGINE_TABLES else name
        present = {row[0] for row in db.fetch_all(cursor, _COLUMNS, (qualified,))}
        if not present:
            problems.append(f"table {shown} is missing")
        elif missing := needed - present:
            problems.append(f"{shown} lacks column(s) {', '.join(sorted(missing))}")
    if problems:
        raise SchemaError("; ".join(problems) + "; run `engine db init`")



def _create(cursor: db.Cursor, statement: str, qualified: str, name: str) -> None:
    cursor.executescript(statement)
    cursor.execute(f"COMMENT ON TABLE {qualified} IS '{mark(name)}'")
    log.info("created table %s", qualified)


def _lacks_columns(cursor: db.Cursor, engine_schema: str) -> bool:
    for name in ENGINE_TABLES:
        present = {r[0] for r in db.fetch_all(cursor, _COLUMNS, (f"{quoted(engine_schema)}.{name}",))}
        if present and REQUIRED_COLUMNS.get(name, set()) - present:
            return True
    return False

