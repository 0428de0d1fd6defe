"""Step 5, verify: DuckDB proves, row by row, that the month holds what it should.

Read-only. Two kinds of check over the month as the run left it:

- against the source: the expected rows and the after snapshot are joined once into a ledger,
  one row per key on either side (the two EXCEPT directions are its one-sided rows): no
  expected key absent, none present that the source does not imply, no key newly duplicated,
  equal counts per model and per (date, model), the settlement periods of both tables alike;
- against the run itself (`rows_exact`): the table as the run leaves it is predicted from the
  snapshot it diffed (less the rows it deleted, with the rows it updated at their new values,
  plus the rows it inserted). PostgreSQL's per-day fingerprint of the month after the commit
  (`engine.month.fingerprints`: count and Σ row hash, values at their stored scale) must be
  the one the write transaction predicted from the snapshot's own row hashes and the staged
  rows'. When it is, the predicted rows are the table's and the checks against the source
  run over them, with no re-read. When it is not (a trigger or a rule that changes or drops a
  row, a column of lower scale that rounds, a concurrent writer), the month is read back and
  compared with the prediction as multisets of (key, bitcoin, difficulty) with no tolerance,
  and the first rows on one side only are named with got and want.

Differences known before the load and not asked to be repaired (drift, orphans, duplicates)
are excluded from the ledger's checks and reported as outstanding; `rows_exact` still
requires them to be exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import polars as pl

from engine.formula import KEY
from engine.month.diff import Diff
from engine.store import resources

_K = ", ".join(KEY)

# The table as the run leaves it, predicted from the snapshot and what the run changed.
_PREDICTED = f"""
SELECT {_K}, bitcoin_mined, difficulty FROM before_rows WHERE id NOT IN (SELECT id FROM changed)
UNION ALL SELECT {_K}, bitcoin_mined, difficulty FROM changed WHERE action = 'update'
UNION ALL SELECT {_K}, bitcoin_mined, difficulty FROM inserted
"""

# One row per key on either side; the two EXCEPT directions are its one-sided rows.
_LEDGER = f"""
WITH got AS (
    SELECT {_K}, count(*) AS copies, sum(bitcoin_mined) AS got
    FROM after_rows GROUP BY ALL),
want AS (
    SELECT {_K}, bitcoin_mined AS want FROM read_parquet($expected)),
ledger AS (
    SELECT {_K},
           want.want IS NOT NULL AS expected, want.want,
           coalesce(got.copies, 0) AS copies, got.got,
           o.settlement_date IS NOT NULL AS known_orphan,
           d.settlement_date IS NOT NULL AS known_drift,
           u.settlement_date IS NOT NULL AS known_duplicate
    FROM want FULL JOIN got USING ({_K})
    LEFT JOIN known_orphans o USING ({_K})
    LEFT JOIN known_drift d USING ({_K})
    LEFT JOIN known_duplicates u USING ({_K}))
"""

# Every check but the periods one, per model, in one pass.
_PER_MODEL = _LEDGER + """,
days AS (
    SELECT miner_model, count(*) AS short_days FROM (
        SELECT settlement_date, miner_model FROM ledger WHERE expected GROUP BY ALL
        HAVING count(*) <> count(*) FILTER (copies > 0))
    GROUP BY ALL)
SELECT miner_model,
       count(*) FILTER (expected AND copies = 0) AS missing,           -- expected EXCEPT after
       count(*) FILTER (NOT expected AND NOT known_orphan) AS unexpected,  -- after EXCEPT expected
       count(*) FILTER (copies > 1 AND NOT known_duplicate) AS new_duplicates,
       count(*) FILTER (expected AND copies > 0) AS present,
       coalesce(any_value(days.short_days), 0) AS short_days
FROM ledger
LEFT JOIN days USING (miner_model)
GROUP BY miner_model ORDER BY miner_model
"""

_PERIODS = f"""
WITH curtailed AS (
    SELECT DISTINCT settlement_date, settlement_period FROM (
        SELECT settlement_date, settlement_period, farm_id FROM read_parquet($source)
        GROUP BY ALL HAVING sum(abs(volume)) > 0)),
calculated AS (
    SELECT DISTINCT settlement_date, settlement_period
    FROM after_rows ANTI JOIN known_orphans USING ({_K}))
SELECT (SELECT count(*) FROM (FROM curtailed EXCEPT FROM calculated))
     + (SELECT count(*) FROM (FROM calculated EXCEPT FROM curtailed))
"""


_EXACT = "DECIMAL(38, 10)"  # what connectorx reads numeric as: the same scale on both sides
_ROW = f"{_K}, CAST(bitcoin_mined AS {_EXACT}) AS bitcoin_mined, CAST(difficulty AS {_EXACT}) AS difficulty"

# The table as the run leaves it, predicted, against the month read back, both as multisets.
_ROWS_EXACT = f"""
WITH predicted AS (SELECT {_ROW} FROM ({_PREDICTED})),
got AS (SELECT {_ROW} FROM after_rows),
unpredicted AS (FROM got EXCEPT ALL FROM predicted),
lacking AS (FROM predicted EXCEPT ALL FROM got)
SELECT (SELECT count(*) FROM unpredicted), (SELECT count(*) FROM lacking),
       (SELECT list(u ORDER BY u) FROM (FROM unpredicted ORDER BY ALL LIMIT $samples) u),
       (SELECT list(l ORDER BY l) FROM (FROM lacking ORDER BY ALL LIMIT $samples) l)
"""
SAMPLES = 3


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    present: int  # expected keys found after the load, each counted once
    outstanding: dict[str, int] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def to_dict(self) -> dict[str, object]:
        return {"verified": self.verified, "present": self.present, "outstanding": self.outstanding,
                "checks": [check.to_dict() for check in self.checks]}

    def plus(self, *checks: Check) -> Verdict:
        """The same verdict with more checks (the summaries', taken in PostgreSQL)."""
        return replace(self, checks=self.checks + checks)


def verify_month(
    *, expected: list[Path], curtailment: list[Path], before: Diff, snapshot: list[Path],
    changed: pl.DataFrame, inserted: pl.DataFrame | list[Path], after: Path | None = None,
    moved: str = "", memory_mb: int | None = None,
) -> Verdict:
    """Run the checks over the Parquet files (a month's parts: one, or one per slice).
    `before` is the diff taken before the load, less what the run repaired; `snapshot` the
    calculations it was taken from; `changed` the repair actions the run applied
    (`actions.ACTIONS_SCHEMA`) and `inserted` the rows it inserted (a frame, or its files).
    `memory_mb` caps what DuckDB holds (it spills beyond); each of its threads needs some of
    it, so a small cap runs fewer threads than the machine has.

    Without `after`, the table's fingerprint matched the prediction: the predicted rows are
    checked against the source. With `after` (the month read back, because the fingerprints
    differed on the days `moved` names), the rows read back are, and `rows_exact` fails."""
    with _connection().cursor() as con:
        if memory_mb is not None:
            con.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
            threads = min(resources.usable_cpus(), max(1, int(memory_mb) // MB_PER_THREAD))
            con.execute(f"SET threads = {threads}")
        for name, frame in (("known_orphans", before.orphans), ("known_drift", before.drift),
                            ("known_duplicates", before.duplicates)):
            con.register(name, frame.select(KEY).unique().to_arrow())
        con.register("changed", changed.to_arrow())
        columns = [*KEY, "bitcoin_mined", "difficulty"]
        con.register("inserted", inserted.select(columns).to_arrow()
                     if isinstance(inserted, pl.DataFrame)
                     else con.read_parquet([str(p) for p in inserted]).select(", ".join(columns)))
        con.register("before_rows", con.read_parquet([str(p) for p in snapshot]))
        con.register("after_rows", con.sql(_PREDICTED) if after is None
                     else con.read_parquet(str(after)))
        per_model = con.execute(_PER_MODEL, {"expected": [str(p) for p in expected]}).fetchall()
        periods = con.execute(_PERIODS, {"source": [str(p) for p in curtailment]}).fetchone()
        exact = None if after is None else con.execute(_ROWS_EXACT, {"samples": SAMPLES}).fetchone()
    checks = (*_checks(per_model, int(periods[0]) if periods else 0),
              _rows_exact(*exact, moved=moved) if exact else _FINGERPRINTS_AGREE)
    outstanding = {kind: getattr(before, kind).height for kind in ("drift", "orphans", "duplicates")}
    return Verdict(checks, sum(row[4] for row in per_model if row[0] is not None),
                   {k: v for k, v in outstanding.items() if v})


def _checks(per_model: list[tuple], periods: int) -> tuple[Check, ...]:
    total = {name: sum(row[i] for row in per_model)
             for i, name in enumerate(("missing", "unexpected", "new_duplicates"), start=1)}
    short_days = sum(row[5] for row in per_model)
    models = [row for row in per_model if row[0] is not None and row[4] > 0]
    return (
        Check("missing_keys", total["missing"] == 0,
              f"{total['missing']} expected key(s) absent after the load"),
        Check("unexpected_keys", total["unexpected"] == 0,
              f"{total['unexpected']} key(s) present that the source does not imply"),
        Check("counts_per_date_and_model", short_days == 0,
              f"{short_days} (date, model) pair(s) with fewer rows than expected"),
        Check("equal_counts_per_model", len({row[4] for row in models}) <= 1,
              ", ".join(f"{row[0]} {row[4]}" for row in models) or "no rows"),
        Check("settlement_periods", periods == 0,
              f"{periods} (date, period) pair(s) in one table and not the other"),
        Check("no_duplicate_keys", total["new_duplicates"] == 0,
              f"{total['new_duplicates']} key(s) newly present more than once"),
    )


_FINGERPRINTS_AGREE = Check("rows_exact", True, "every row as the run wrote or left it (the "
                            "month's fingerprint after the commit is the one predicted)")


def _rows_exact(unpredicted: int, lacking: int, got: list[dict] | None,
                want: list[dict] | None, *, moved: str) -> Check:
    if not unpredicted and not lacking:
        return Check("rows_exact", False, f"the month's fingerprint is not the one predicted "
                     f"({moved}), although the rows read back are: it changed meanwhile")
    wanted = {_key(row): row for row in want or []}
    samples = []
    for row in got or []:
        other = wanted.pop(_key(row), None)
        samples.append(f"{_key(row)} got {_value(row)}" + (f" want {_value(other)}" if other else
                                                        " (not written by this run)"))
    samples += [f"{key} got nothing want {_value(row)}" for key, row in wanted.items()]
    return Check("rows_exact", False,
                 f"{unpredicted} row(s) not as the run wrote or left them, {lacking} row(s) it "
                 f"wrote or left missing or changed; first: {'; '.join(samples[:SAMPLES])}")


def _key(row: dict) -> str:
    return (f"{row['settlement_date']} p{row['settlement_period']} {row['farm_id']} "
            f"{row['miner_model']}")


def _value(row: dict) -> str:
    bitcoin, difficulty = row["bitcoin_mined"], row["difficulty"]
    return (f"{bitcoin.normalize() if bitcoin is not None else None} BTC at difficulty "
            f"{difficulty.normalize() if difficulty is not None else None}")


#: DuckDB's working memory per thread: at 64 threads and 81 MB it ran out of memory.
MB_PER_THREAD = 32

_shared: duckdb.DuckDBPyConnection | None = None


def _connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per process (opening one costs ~25 ms); each call takes a cursor."""
    global _shared
    if _shared is None:
        _shared = duckdb.connect(config={"threads": resources.usable_cpus()})
    return _shared
