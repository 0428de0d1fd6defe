"""PostgreSQL advisory locks: one per month, one for the scheduled job, one per running backfill.

Session-level, so a process that dies releases its months at once; a month left `in_progress`
whose lock is free is stale and the next runner takes it over.
"""

from __future__ import annotations

from engine.months import Month
from engine.store import db

# Advisory locks: one per month, keyed (engine, year * 100 + month). Session-level, so a
# process that dies releases its months at once; a row left `in_progress` whose lock is free
# is stale and the next runner takes it over.
LOCK_CLASS = 0x656E67  # "eng"


TRY_LOCK = "SELECT pg_try_advisory_lock($1::int4, $2::int4)"


UNLOCK = "SELECT pg_advisory_unlock($1::int4, $2::int4)"


LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND classid = $1::int8::oid AND objid = $2::int8::oid AND objsubid = 2
  AND granted LIMIT 1
"""


def try_lock_month(cursor: db.Cursor, month: Month) -> bool:
    """Take the month's advisory lock if it is free; return whether we hold it now."""
    cursor.execute(TRY_LOCK, _lock_key(month))
    row = cursor.fetchone()
    return bool(row and row[0])


def unlock_month(cursor: db.Cursor, month: Month) -> None:
    cursor.execute(UNLOCK, _lock_key(month))
    cursor.fetchall()


def lock_holder(cursor: db.Cursor, month: Month) -> int | None:
    """The backend pid that holds the month's lock, if any."""
    rows = db.fetch_all(cursor, LOCK_HOLDER, _lock_key(month))
    return int(rows[0][0]) if rows else None


def _lock_key(month: Month) -> tuple[int, int]:
    return LOCK_CLASS, month.year * 100 + month.month


# Locks live per database; pg_locks shows every database's, so filter on ours.
HELD_MONTH_LOCKS = """
SELECT objid::int8 FROM pg_locks
WHERE locktype = 'advisory' AND classid = $1::int8::oid AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


# Keys of the other advisory locks, in LOCK_CLASS: months use year * 100 + month (≥ 200001).
SCHEDULER_LOCK = 1


BACKFILL_LOCK_CLASS = LOCK_CLASS + 1  # one per running backfill, so others can tell it is alive


def try_lock(cursor: db.Cursor, key: tuple[int, int]) -> bool:
    cursor.execute(TRY_LOCK, key)
    row = cursor.fetchone()
    return bool(row and row[0])


def unlock(cursor: db.Cursor, key: tuple[int, int]) -> None:
    cursor.execute(UNLOCK, key)
    cursor.fetchall()


def month_lock_key(month: Month) -> tuple[int, int]:
    return _lock_key(month)


def _month_of_key(key: int) -> Month | None:
    year, month = divmod(int(key), 100)
    return Month(year, month) if 2000 <= year <= 2100 and 1 <= month <= 12 else None


def held_months(cursor: db.Cursor) -> list[Month]:
    """The months whose lock a live process holds in this database."""
    keys = [_month_of_key(row[0]) for row in db.fetch_all(cursor, HELD_MONTH_LOCKS, (LOCK_CLASS,))]
    return [m for m in keys if m is not None]
