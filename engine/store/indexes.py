"""The production tables' indexes the engine wants: the unique key of the calculations (its
merge relies on it to skip a key another writer inserted) and `curtailment_records`'
settlement_date (each month's extract reads by date). Created where the engine may (it
created the table, it owns the database, or it was asked to), proposed otherwise; a role
that may not create them gets a note instead of a failure."""

from __future__ import annotations

import logging

import adbc_driver_manager

from engine.store import db
from engine.store.names import CALCULATIONS, KEY_COLUMNS, KEY_INDEX, LOOKUP_INDEX, SOURCE_DATE_INDEX

log = logging.getLogger(__name__)

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


def has_unique_key(cursor: db.Cursor) -> bool:
    """True when a valid unique index covers exactly the calculations key (whatever its name)."""
    return bool(db.fetch_all(cursor, _UNIQUE_KEY, (CALCULATIONS, list(KEY_COLUMNS)))[0][0])


def has_source_date_index(cursor: db.Cursor) -> bool:
    """True when an index on curtailment_records starts with settlement_date."""
    return bool(db.fetch_all(cursor, _LEADING_INDEX, ("curtailment_records", "settlement_date"))[0][0])


class IndexPlan:
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
