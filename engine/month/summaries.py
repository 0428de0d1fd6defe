"""Summaries: `bitcoin_daily_summaries` = Σ calculations per (date, model), monthly = Σ daily
per (month, model), yearly = Σ monthly per (year, model).

`refresh` runs in the caller's transaction (the one that changed the month) and rewrites only
what differs: one statement per level deletes summary rows that no longer have a sum (and any
second row of a key: production has no unique key on these tables), updates the changed ones
and inserts the new ones. A transaction-level advisory lock per year serialises the yearly
row between months of the same year reconciled in parallel. `verify` is read-only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from engine.months import Month
from engine.store import db
from engine.store.schema import CALCULATIONS

DAILY = "bitcoin_daily_summaries"
MONTHLY = "bitcoin_monthly_summaries"
YEARLY = "bitcoin_yearly_summaries"
#: Advisory lock class of the yearly rows ("eng" + 0x10); the key is the year.
YEAR_LOCK_CLASS = 0x656E67 + 0x10
LOCK_YEAR = "SELECT pg_advisory_xact_lock($1::int4, $2::int4)"


def _refresh(table: str, key: str, scope: str, fresh: str) -> str:
    """One statement: make `table`'s rows within `scope` equal to `fresh` (key, miner_model,
    bitcoin_mined); returns (deleted, updated, inserted)."""
    same = f"t.{key} = s.{key} AND t.miner_model = s.miner_model"
    return f"""
WITH fresh AS ({fresh}),
gone AS (
    DELETE FROM {table} s WHERE {scope}
    AND (NOT EXISTS (SELECT 1 FROM fresh t WHERE {same})
         OR EXISTS (SELECT 1 FROM {table} t WHERE {same} AND t.id < s.id))
    RETURNING 1),
changed AS (
    UPDATE {table} s SET bitcoin_mined = t.bitcoin_mined, updated_at = now()
    FROM fresh t WHERE {same} AND s.bitcoin_mined IS DISTINCT FROM t.bitcoin_mined
    AND NOT EXISTS (SELECT 1 FROM {table} t WHERE {same} AND t.id < s.id)
    RETURNING 1),
added AS (
    INSERT INTO {table} ({key}, miner_model, bitcoin_mined)
    SELECT t.{key}, t.miner_model, t.bitcoin_mined FROM fresh t
    WHERE NOT EXISTS (SELECT 1 FROM {table} s WHERE {same})
    RETURNING 1)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM changed), (SELECT count(*) FROM added)
"""


# $1: the days (date[]).
REFRESH_DAILY = _refresh(DAILY, "summary_date", "s.summary_date = ANY($1::date[])", f"""
    SELECT settlement_date AS summary_date, miner_model, sum(bitcoin_mined) AS bitcoin_mined
    FROM {CALCULATIONS} WHERE settlement_date = ANY($1::date[]) GROUP BY 1, 2""")
# $1: 'YYYY-MM', $2 and $3: the month's first day and the next month's.
REFRESH_MONTHLY = _refresh(MONTHLY, "year_month", "s.year_month = $1", f"""
    SELECT $1::text AS year_month, miner_model, sum(bitcoin_mined) AS bitcoin_mined
    FROM {DAILY} WHERE summary_date >= $2 AND summary_date < $3 GROUP BY 2""")
# $1: 'YYYY'.
REFRESH_YEARLY = _refresh(YEARLY, "year", "s.year = $1", f"""
    SELECT $1::text AS year, miner_model, sum(bitcoin_mined) AS bitcoin_mined
    FROM {MONTHLY} WHERE left(year_month, 4) = $1 GROUP BY 2""")


def _mismatches(fresh: str, table: str, key: str, scope: str) -> str:
    """Keys whose summary is absent, extra, different from the sum, or present twice."""
    return f"""
SELECT count(*) FROM ({fresh}) f
FULL JOIN (SELECT {key}, miner_model, sum(bitcoin_mined) AS bitcoin_mined, count(*) AS copies
           FROM {table} WHERE {scope} GROUP BY 1, 2) s USING ({key}, miner_model)
WHERE f.bitcoin_mined IS DISTINCT FROM s.bitcoin_mined OR s.copies > 1
"""


# $1 days, $2 'YYYY-MM', $3 first day, $4 next month's first day, $5 'YYYY'.
VERIFY = f"""
SELECT ({_mismatches(f'''SELECT settlement_date AS summary_date, miner_model,
                                sum(bitcoin_mined) AS bitcoin_mined FROM {CALCULATIONS}
                         WHERE settlement_date = ANY($1::date[]) GROUP BY 1, 2''',
                     DAILY, "summary_date", "summary_date = ANY($1::date[])")}),
       ({_mismatches(f'''SELECT $2::text AS year_month, miner_model, sum(bitcoin_mined) AS bitcoin_mined
                         FROM {DAILY} WHERE summary_date >= $3 AND summary_date < $4 GROUP BY 2''',
                     MONTHLY, "year_month", "year_month = $2")}),
       ({_mismatches(f'''SELECT $5::text AS year, miner_model, sum(bitcoin_mined) AS bitcoin_mined
                         FROM {MONTHLY} WHERE left(year_month, 4) = $5 GROUP BY 2''',
                     YEARLY, "year", "year = $5")})
"""


@dataclass(frozen=True)
class SummaryRefresh:
    """Summary rows deleted, updated and inserted, per level; `days` refreshed."""

    days: int
    changes: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {"days": self.days, "changes": self.changes}


@dataclass(frozen=True)
class SummaryCheck:
    """Summary keys that disagree with what they sum, per level (0 everywhere: verified)."""

    month: Month
    days: int
    daily: int
    monthly: int
    yearly: int

    @property
    def verified(self) -> bool:
        return self.daily == self.monthly == self.yearly == 0

    def detail(self) -> str:
        return (f"{self.daily} daily (of {self.days} day(s)), {self.monthly} monthly, "
                f"{self.yearly} yearly key(s) differ from their sums")

    def to_dict(self) -> dict[str, Any]:
        return {"month": str(self.month), "days": self.days, "daily": self.daily,
                "monthly": self.monthly, "yearly": self.yearly, "verified": self.verified}


def refresh(cursor: db.Cursor, month: Month, days: Iterable[date] | None = None) -> SummaryRefresh:
    """Make the summaries of `days` (default: every day of `month`), of `month` and of its year
    equal to their sums, in the caller's transaction."""
    chosen = sorted(set(days)) if days is not None else month.days()
    changes = {"daily": _run(cursor, REFRESH_DAILY, (chosen,))}
    changes["monthly"] = _run(cursor, REFRESH_MONTHLY, (str(month), month.first_day,
                                                        month.next_first_day))
    db.fetch_all(cursor, LOCK_YEAR, (YEAR_LOCK_CLASS, month.year))
    changes["yearly"] = _run(cursor, REFRESH_YEARLY, (str(month.year),))
    return SummaryRefresh(len(chosen), changes)


def verify(cursor: db.Cursor, month: Month, days: Iterable[date] | None = None) -> SummaryCheck:
    """Check daily = Σ calculations for `days` (default: all of `month`), monthly = Σ daily for
    `month` and yearly = Σ monthly for its year. Read-only."""
    chosen = sorted(set(days)) if days is not None else month.days()
    row = db.fetch_all(cursor, VERIFY, (chosen, str(month), month.first_day, month.next_first_day,
                                        str(month.year)))[0]
    return SummaryCheck(month, len(chosen), int(row[0]), int(row[1]), int(row[2]))


def _run(cursor: db.Cursor, sql: str, params: tuple[Any, ...]) -> dict[str, int]:
    deleted, updated, inserted = db.fetch_all(cursor, sql, params)[0]
    return {"deleted": int(deleted), "updated": int(updated), "inserted": int(inserted)}
