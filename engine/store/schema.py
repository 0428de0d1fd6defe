"""The database schema: the engine's own tables in a schema of their own, the production
tables it reads and writes, the indexes it proposes, and a check of what exists.

The engine's tables live in the schema `Settings.schema` (`engine` by default). Statements
that name them write `{engine}.table`; `sql` puts the validated, quoted schema name in its
place (connectorx cannot bind parameters nor run `SET search_path` first, so the name is part
of the text). Every table the engine creates carries the comment `engine:<table>:v1`: a table
without it is not the engine's, and the engine never alters, drops or writes it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from importlib.resources import files

import adbc_driver_manager

from engine.errors import SchemaError
from engine.store import db
from engine.store.config import check_schema_name

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "engine"
PLACEHOLDER = "{engine}"
MARK_VERSION = "v1"

CALCULATIONS = "historical_bitcoin_calculations"
KEY_COLUMNS = ("settlement_date", "settlement_period", "farm_id", "miner_model")
KEY_INDEX = "historical_bitcoin_calculations_key"
# Used for the month's range reads while duplicates keep the unique index from being built.
LOOKUP_INDEX = "historical_bitcoin_calculations_key_lookup"
SOURCE_DATE_INDEX = "curtailment_records_settlement_date_idx"

PRODUCTION_TABLES = (
    "curtailment_records", CALCULATIONS, "bitcoin_daily_summaries", "bitcoin_monthly_summaries",
    "bitcoin_yearly_summaries",
)
ENGINE_TABLES = (
    "bitcoin_difficulty", "reconciliation_runs", "reconciliation_progress", "reconciliation_backfills",
)
TABLES = PRODUCTION_TABLES + ENGINE_TABLES
# Older tools' tables `db init` reports (besides any table named like one of the engine's).
RELATED_PATTERN = "reconciliation%"

REQUIRED_COLUMNS = {
    "curtailment_records": {"id", "settlement_date", "settlement_period", "farm_id", "volume"},
    CALCULATIONS: {"id", *KEY_COLUMNS, "bitcoin_mined", "difficulty", "calculated_at"},
    "bitcoin_difficulty": {"settlement_date", "difficulty"},
    # The engine's own tables, with the newest columns it writes (`engine db init` adds them).
    "reconciliation_runs": {"backfill_id", "causes", "repairs", "summaries", "undo_of", "undone_by"},
    "reconciliation_progress": {"month", "source_records", "last_error_kind", "last_error_at",
                                "retries"},
    "reconciliation_backfills": {"id", "throttle"},
}

check_name = check_schema_name


def quoted(engine_schema: str) -> str:
    """The schema's name as an SQL identifier (validated, so quoting cannot be escaped)."""
    return f'"{check_name(engine_schema)}"'


def sql(statement: str, engine_schema: str = DEFAULT_SCHEMA) -> str:
    """`statement` with `{engine}` replaced by the quoted engine schema."""
    return statement.replace(PLACEHOLDER, quoted(engine_schema))


def table(name: str, engine_schema: str = DEFAULT_SCHEMA) -> str:
    """The qualified name of one of the engine's tables, `"engine".name`."""
    if name not in ENGINE_TABLES:
        raise ValueError(f"{name} is not one of the engine's tables")
    return f"{quoted(engine_schema)}.{name}"


def mark(name: str) -> str:
    """The comment that marks a table as created by the engine."""
    return f"engine:{name}:{MARK_VERSION}"


# --- the catalog --------------------------------------------------------------------------------

# Tables named like the engine's or like the older tools' in any user schema, with what marks
# them, their columns (name type, in order) and whether this role may read them.
_SURVEY = r"""
SELECT n.nspname::text, c.relname::text, coalesce(obj_description(c.oid, 'pg_class'), ''),
       (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                          ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       has_table_privilege(c.oid, 'SELECT'), c.relpersistence = 't'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND (n.nspname NOT LIKE 'pg\_temp%' OR c.relpersistence <> 't')
  AND (c.relname = ANY($1) OR c.relname LIKE $2)
ORDER BY 1, 2
"""
_SCHEMA_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"
_CURRENT_SCHEMA = "SELECT current_schema()::text"
# The columns of a table as a query names it (resolved through the search_path).
_COLUMNS = """
SELECT a.attname::text FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
"""
_RESOLVES = "SELECT to_regclass($1) IS NOT NULL"
# A valid unique index on exactly the key columns (in any order): what ON CONFLICT infers.
_UNIQUE_KEY = """
SELECT EXISTS (
    SELECT 1 FROM pg_index i
    WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid AND i.indisready
      AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = cardinality($2::text[])
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[]))
          = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))
"""
# A valid index that starts with the column: a range read on it needs no full scan.
_LEADING_INDEX = """
SELECT EXISTS (
    SELECT 1 FROM pg_index i JOIN pg_attribute a
      ON a.attrelid = i.indrelid AND a.attnum = (i.indkey::int2[])[0]
    WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND a.attname = $2)
"""
_INDEX_EXISTS = """
SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = $1 AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass($2))
"""
_DUPLICATES = f"""
SELECT count(*), coalesce(sum(n - 1), 0) FROM (
    SELECT count(*) AS n FROM {CALCULATIONS}
    GROUP BY {", ".join(KEY_COLUMNS)} HAVING count(*) > 1
) d
"""
# CONCURRENTLY: building an index on a live production table must not block its writers.
CREATE_KEY_INDEX = (
    f"CREATE UNIQUE INDEX CONCURRENTLY {KEY_INDEX} ON {CALCULATIONS} ({', '.join(KEY_COLUMNS)})"
)
CREATE_LOOKUP_INDEX = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {LOOKUP_INDEX} "
    f"ON {CALCULATIONS} ({', '.join(KEY_COLUMNS)})"
)
CREATE_SOURCE_DATE_INDEX = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {SOURCE_DATE_INDEX} "
    "ON curtailment_records (settlement_date)"
)
WHY_SOURCE_INDEX = ("without it each month's extract reads the whole of curtailment_records")
WHY_KEY_INDEX = ("without it each merge locks historical_bitcoin_calculations against other "
                 "writers and checks NOT EXISTS over it, which is slower; with it a key another "
                 "writer inserts is rejected by the index")
INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class FoundTable:
    """A table under a name the engine uses (or an older tool's) that is not the engine's."""

    schema: str
    name: str
    columns: str
    rows: int | None  # None: this role may not read it
    note: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        rows = "rows unknown (no SELECT)" if self.rows is None else f"{self.rows:,} row(s)"
        return f"{self.schema}.{self.name} ({self.columns}), {rows}: {self.note}"


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
                create_indexes: bool = False) -> InitResult:
    """Create the engine's schema and its missing tables; never drop or rewrite data.

    - Tables an earlier version created in `public`, proven the engine's by their columns, are
      moved into the schema with their rows (`moved`); other tables under the engine's names
      are reported (`foreign`) and left alone.
    - The production tables are created only where missing and `own_database` (the embedded
      server, the demo); otherwise a missing one raises `SchemaError`.
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
        shapes = _engine_shapes(url, engine_schema)
        survey = _survey(cursor)
        home = db.fetch_all(cursor, _CURRENT_SCHEMA)[0][0] or "public"
        mine = {(s, n) for s, n, comment, *_ in survey if comment == mark(n)}
        if not db.fetch_all(cursor, _SCHEMA_EXISTS, (engine_schema,))[0][0]:
            cursor.execute(f"CREATE SCHEMA {quoted(engine_schema)}")
            log.info("created schema %s", engine_schema)
        moved_from, moved = _move_earlier_layout(cursor, survey, shapes, engine_schema, home, mine)
        sections = _sections(engine_schema)
        for name in ENGINE_TABLES:
            if (engine_schema, name) in mine:
                continue
            if any(s == engine_schema and n == name for s, n, *_ in survey):
                raise SchemaError(
                    f"{engine_schema}.{name} exists but is not the engine's (it has no "
                    f"'{mark(name)}' comment); the engine leaves it alone: set ENGINE_SCHEMA to "
                    "another schema")
            _create(cursor, sections[name], f"{quoted(engine_schema)}.{name}", name)
            created.append(f"{engine_schema}.{name}")
        owned_production = set()
        for name in PRODUCTION_TABLES:
            if db.fetch_all(cursor, _RESOLVES, (name,))[0][0]:
                if (home, name) in mine:
                    owned_production.add(name)
                continue
            if own_database:
                _create(cursor, sections[name], name, name)
                created.append(name)
                owned_production.add(name)
        if created or moved or _lacks_columns(cursor, engine_schema):
            cursor.executescript(sections["upgrade"])
        check_schema(cursor, engine_schema)
        foreign = _foreign(cursor, survey, engine_schema, mine | moved_from)
        indexes = _Indexes(cursor, allowed=create_indexes or own_database)
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


def has_unique_key(cursor: db.Cursor) -> bool:
    """True when a valid unique index covers exactly the calculations key (whatever its name)."""
    return bool(db.fetch_all(cursor, _UNIQUE_KEY, (CALCULATIONS, list(KEY_COLUMNS)))[0][0])


def has_source_date_index(cursor: db.Cursor) -> bool:
    """True when an index on curtailment_records starts with settlement_date."""
    return bool(db.fetch_all(cursor, _LEADING_INDEX, ("curtailment_records", "settlement_date"))[0][0])


# --- internals ----------------------------------------------------------------------------------


def _sections(engine_schema: str) -> dict[str, str]:
    """schema.sql cut at its `-- table: NAME` and `-- upgrade` markers, schema filled in."""
    text = sql(files("engine.store").joinpath("schema.sql").read_text(), engine_schema)
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- table: "):
            current = sections.setdefault(line.removeprefix("-- table: ").strip(), [])
        elif line.strip() == "-- upgrade":
            current = sections.setdefault("upgrade", [])
        current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _create(cursor: db.Cursor, statement: str, qualified: str, name: str) -> None:
    cursor.executescript(statement)
    cursor.execute(f"COMMENT ON TABLE {qualified} IS '{mark(name)}'")
    log.info("created table %s", qualified)


def _survey(cursor: db.Cursor) -> list[tuple[str, str, str, str, bool, bool]]:
    names = list(TABLES)
    return [(r[0], r[1], r[2], r[3] or "", bool(r[4]), bool(r[5]))
            for r in db.fetch_all(cursor, _SURVEY, (names, RELATED_PATTERN))]


def _engine_shapes(url: str, engine_schema: str) -> dict[str, tuple[set[str], set[str]]]:
    """Per engine table, the (column type) pairs of its first release and of today's version,
    read from schema.sql by creating the tables as temporary ones and rolling back."""
    sections = _sections(engine_schema)
    temporary = {name: sections[name].replace(
        f"{quoted(engine_schema)}.{name}", f"pg_temp.{name}") for name in ENGINE_TABLES}
    upgrade = sections["upgrade"].replace(quoted(engine_schema) + ".", "pg_temp.")
    shapes: dict[str, tuple[set[str], set[str]]] = {}
    query = """SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
               WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped"""
    with db.connect(url) as conn, conn.cursor() as cursor:
        try:
            first: dict[str, set[str]] = {}
            for name, statement in temporary.items():
                cursor.executescript(statement)
                first[name] = {r[0] for r in db.fetch_all(cursor, query, (f"pg_temp.{name}",))}
            cursor.executescript(upgrade)
            for name in ENGINE_TABLES:
                now = {r[0] for r in db.fetch_all(cursor, query, (f"pg_temp.{name}",))}
                shapes[name] = (first[name], now)
        finally:
            conn.rollback()
    return shapes


def _move_earlier_layout(cursor: db.Cursor, survey: list[tuple[str, str, str, str, bool, bool]],
                         shapes: dict[str, tuple[set[str], set[str]]], engine_schema: str,
                         home: str, mine: set[tuple[str, str]]
                         ) -> tuple[set[tuple[str, str]], list[str]]:
    """Move the tables an earlier version created outside the schema (in `public` or the
    current schema) into it, rows and all, when their columns prove them the engine's: those
    of its first release, of today's, or of a release between. Return where they were and a
    line per table moved."""
    moved_from: set[tuple[str, str]] = set()
    moved = []
    present_in_schema = {n for s, n, *_ in survey if s == engine_schema}
    for schema_name, name, _, columns, _, temp in survey:
        if (name not in ENGINE_TABLES or temp or schema_name == engine_schema
                or schema_name not in {"public", home} or name in present_in_schema):
            continue
        first, now = shapes[name]
        have = set(columns.split(", ")) if columns else set()
        if not first <= have <= now:
            continue
        source = f'"{schema_name}".{name}'
        rows = int(db.fetch_all(cursor, f"SELECT count(*) FROM {source}")[0][0])
        try:
            cursor.execute(f"ALTER TABLE {source} SET SCHEMA {quoted(engine_schema)}")
            cursor.execute(f"COMMENT ON TABLE {quoted(engine_schema)}.{name} IS '{mark(name)}'")
        except adbc_driver_manager.Error as error:
            if getattr(error, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                raise
            raise SchemaError(
                f"{schema_name}.{name} was created by an earlier version of the engine; moving it "
                f"into schema {engine_schema} needs its owner: run `ALTER TABLE {source} SET "
                f"SCHEMA {quoted(engine_schema)}` as the owner, then `engine db init`") from None
        present_in_schema.add(name)
        mine.add((engine_schema, name))
        moved_from.add((schema_name, name))
        moved.append(f"{engine_schema}.{name} moved from {schema_name}.{name} with its {rows:,} row(s)")
        log.info("moved %s.%s into %s (%d rows)", schema_name, name, engine_schema, rows)
    return moved_from, moved


def _lacks_columns(cursor: db.Cursor, engine_schema: str) -> bool:
    for name in ENGINE_TABLES:
        present = {r[0] for r in db.fetch_all(cursor, _COLUMNS, (f"{quoted(engine_schema)}.{name}",))}
        if present and REQUIRED_COLUMNS.get(name, set()) - present:
            return True
    return False


def _foreign(cursor: db.Cursor, survey: list[tuple[str, str, str, str, bool, bool]],
             engine_schema: str, skip: set[tuple[str, str]]) -> list[FoundTable]:
    """The tables under the engine's names (or the older tools') that are not its own."""
    found = []
    for schema_name, name, _, columns, readable, temp in survey:
        if (schema_name, name) in skip or temp or name in PRODUCTION_TABLES:
            continue
        rows = None
        if readable:
            rows = int(db.fetch_all(cursor, f'SELECT count(*) FROM "{schema_name}".{name}')[0][0])
        if name in ENGINE_TABLES and schema_name != engine_schema:
            note = (f"not the engine's (its own is {engine_schema}.{name}); left alone")
        else:
            note = "not the engine's; left alone"
        found.append(FoundTable(schema_name, name, columns, rows, note))
    return found


class _Indexes:
    """The production tables' indexes: created when allowed, otherwise proposed."""

    def __init__(self, cursor: db.Cursor, *, allowed: bool) -> None:
        self.cursor, self.allowed = cursor, allowed
        self.created: list[str] = []
        self.proposed: list[str] = []
        self.notes: list[str] = []

    def source_date(self, *, allowed_here: bool) -> None:
        if has_source_date_index(self.cursor):
            return
        if not (self.allowed or allowed_here):
            self.proposed.append(CREATE_SOURCE_DATE_INDEX)
            self.notes.append(f"curtailment_records has no index on settlement_date: {WHY_SOURCE_INDEX}")
            return
        self._build(SOURCE_DATE_INDEX, CREATE_SOURCE_DATE_INDEX, "curtailment_records")

    def unique_key(self, *, allowed_here: bool) -> tuple[str, int, int]:
        if has_unique_key(self.cursor):
            return "present", 0, 0
        duplicates, surplus = (int(v) for v in db.fetch_all(self.cursor, _DUPLICATES)[0])
        allowed = self.allowed or allowed_here
        if duplicates == 0:
            if allowed and self._build(KEY_INDEX, CREATE_KEY_INDEX, CALCULATIONS):
                # The unique index serves every lookup the plain one did.
                self._drop_lookup()
                return "created", 0, 0
            if not allowed:
                self.proposed.append(CREATE_KEY_INDEX)
                self.notes.append(f"{CALCULATIONS} has no unique index on "
                                  f"({', '.join(KEY_COLUMNS)}): {WHY_KEY_INDEX}")
            return "missing", 0, 0
        log.warning("%d duplicated keys (%d surplus rows) prevent the unique index", duplicates, surplus)
        if not self._valid(LOOKUP_INDEX):
            if allowed:
                self._build(LOOKUP_INDEX, CREATE_LOOKUP_INDEX, CALCULATIONS)
            else:
                self.proposed.append(CREATE_LOOKUP_INDEX)
        return "blocked", duplicates, surplus

    def _build(self, name: str, statement: str, on: str) -> bool:
        try:
            # A failed concurrent build leaves an invalid index behind; it is ours to drop.
            if self._valid(name) is False:
                self.cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            self.cursor.execute(statement)
        except adbc_driver_manager.Error as error:
            if getattr(error, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                raise
            self.proposed.append(statement)
            self.notes.append(f"could not create index {name}: only the owner of {on} may; "
                              f"ask them to run `{statement}`")
            log.warning("no privilege to create index %s on %s", name, on)
            return False
        self.created.append(name)
        return True

    def _drop_lookup(self) -> None:
        if self._valid(LOOKUP_INDEX) is not None:
            try:
                self.cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {LOOKUP_INDEX}")
            except adbc_driver_manager.Error as error:
                if getattr(error, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                    raise

    def _valid(self, name: str) -> bool | None:
        rows = db.fetch_all(self.cursor, _INDEX_EXISTS, (name, CALCULATIONS if "historical" in name
                                                         else "curtailment_records"))
        return bool(rows[0][0]) if rows else None
