"""What in the database is the engine's: the tables under its names (or the older tools'),
which of them it marked as its own, the tables an earlier version left in `public` (proven
its own by their columns, then moved into its schema with their rows), and the rest, which
it lists and leaves alone."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import adbc_driver_manager

from engine.errors import SchemaError
from engine.store import db
from engine.store.indexes import INSUFFICIENT_PRIVILEGE
from engine.store.names import (
    ENGINE_TABLES,
    PRODUCTION_TABLES,
    RELATED_PATTERN,
    TABLES,
    mark,
    quoted,
    sections,
)

log = logging.getLogger(__name__)

Survey = list[tuple[str, str, str, str, bool, bool]]


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



def survey(cursor: db.Cursor) -> Survey:
    names = list(TABLES)
    return [(r[0], r[1], r[2], r[3] or "", bool(r[4]), bool(r[5]))
            for r in db.fetch_all(cursor, _SURVEY, (names, RELATED_PATTERN))]


def engine_shapes(url: str, engine_schema: str) -> dict[str, tuple[set[str], set[str]]]:
    """Per engine table, the (column type) pairs of its first release and of today's version,
    read from schema.sql by creating the tables as temporary ones and rolling back."""
    statements = sections(engine_schema)
    temporary = {name: statements[name].replace(
        f"{quoted(engine_schema)}.{name}", f"pg_temp.{name}") for name in ENGINE_TABLES}
    upgrade = statements["upgrade"].replace(quoted(engine_schema) + ".", "pg_temp.")
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


def move_earlier_layout(cursor: db.Cursor, survey: Survey,
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


def foreign(cursor: db.Cursor, survey: Survey,
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

