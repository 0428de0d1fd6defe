"""`engine demo --legacy-damage`: every class and cause in known numbers, found exactly by
`engine diff`, repaired by `engine run --fix all`, and put back byte for byte by
`engine undo --backfill`."""

from __future__ import annotations

import json
from pathlib import Path

from engine.demo import DemoResult, fill_database
from engine.months import Month
from engine.repairs.legacy import DEMO_DAMAGE
from engine.reporting import results
from engine.store import schema
from tests.conftest import execute, insert_curtailment, insert_difficulty
from tests.test_backfill import engine

# 2024-04 holds the halving (2024-04-20: only its earlier days can carry the halving reward's
# damage), 2024-05 comes after it.
DEMO = ("demo", "--months", "2024-04..2024-05", "--legacy-damage")
RANGE = ("--from", "2024-04", "--to", "2024-05")
#: The demo's own backlog writes this many rows with the fallback difficulty
#: (`generate.backlog(drifted=40)`), besides the damage.
BACKLOG_FALLBACK = 40
EXPORT = """SELECT id, settlement_date, settlement_period, farm_id, miner_model,
                   bitcoin_mined::text, difficulty::text, calculated_at
            FROM historical_bitcoin_calculations ORDER BY id"""
# Rows no qualifying curtailment implies (no record of the farm with |volume| > 0 in that
# period, or a model the engine does not know), counted without the engine.
ORPHANS = """
WITH qualifying AS (
    SELECT settlement_date, settlement_period, farm_id FROM curtailment_records
    GROUP BY settlement_date, settlement_period, farm_id HAVING sum(abs(volume)) > 0)
SELECT count(*) FROM historical_bitcoin_calculations c
LEFT JOIN qualifying q USING (settlement_date, settlement_period, farm_id)
WHERE q.farm_id IS NULL OR c.miner_model NOT IN ('S19J_PRO', 'S9', 'M20S')
"""
UNDONE = "SELECT count(*) FROM reconciliation_runs WHERE undone_by IS NOT NULL"


def cli(url: str, data_dir: Path, *args: str, code: int = 0) -> dict:
    result = engine(url, data_dir, *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_every_class_and_cause_is_found_in_the_seeded_numbers_repaired_and_undone(
        database_url: str, tmp_path: Path) -> None:
    seeded = cli(database_url, tmp_path, *DEMO)["data"]["damage"]
    orphans = execute(database_url, ORPHANS)[0][0]

    found = cli(database_url, tmp_path, "diff", *RANGE, code=1)

    assert seeded.keys() == DEMO_DAMAGE.keys()
    for cause, rows in DEMO_DAMAGE.items():
        if cause == "per_record_rows":  # keys, each written once per record: ≥ 2 rows a key
            assert seeded[cause] >= 2 * rows
        else:
            assert seeded[cause] == rows, cause
    assert found["causes"] == seeded | {
        "fallback_difficulty": DEMO_DAMAGE["fallback_difficulty"] + BACKLOG_FALLBACK}
    totals = found["totals"]
    assert totals["drift"] == sum(found["causes"].values()) - seeded["per_record_rows"]
    assert totals["duplicates"] == seeded["per_record_rows"]
    assert totals["orphans"] == orphans > 0
    assert totals["missing"] == 0  # the demo reconciled its backlog
    halving = [m["causes"]["halving_reward"] for m in found["months"]]
    assert halving[0] == DEMO_DAMAGE["halving_reward"] and halving[1] == 0  # none after it

    before = execute(database_url, EXPORT)
    run = cli(database_url, tmp_path, "run", "--fix", "all")  # completed months included
    fixed = cli(database_url, tmp_path, "diff", *RANGE)

    assert run["counts"]["verified"] == 2 and run["backfill_id"] is not None
    assert fixed["differs"] is False and fixed["months_with_summary_differences"] == 0
    assert all(n == 0 for kind, n in fixed["totals"].items() if kind not in ("expected", "present"))
    assert all(m["summaries"]["verified"] for m in fixed["months"])

    undone = cli(database_url, tmp_path, "undo", "--backfill", str(run["backfill_id"]))

    runs = [r["run_id"] for r in undone["runs"]]
    assert runs == sorted(runs, reverse=True)  # the newest run first
    assert sorted(r["month"] for r in undone["runs"]) == ["2024-04", "2024-05"]
    assert all(r["summaries"]["verified"] for r in undone["runs"])
    assert execute(database_url, EXPORT) == before  # every row, id and digit as it was


def test_the_damaged_demo_leaves_the_indexes_as_db_init_would_and_a_plain_one_restores_them(
        database_url: str) -> None:
    months = [Month(2024, 4)]

    damaged = fill_database(database_url, months, embedded=False, legacy_damage=True)
    after_damage = schema.init_schema(database_url)
    plain = fill_database(database_url, months, embedded=True)
    after_plain = schema.init_schema(database_url)

    assert (after_damage.unique_key, after_damage.created_indexes) == ("blocked", ())
    assert after_damage.duplicate_keys == DEMO_DAMAGE["per_record_rows"]
    assert "damage      fallback_difficulty 12 · stale_difficulty 10 · " in results.demo_summary(
        DemoResult(damaged))
    assert (after_plain.unique_key, after_plain.created_indexes) == ("present", ())
    assert plain.damage == {} and plain.expected_rows == damaged.expected_rows


def test_undo_of_a_backfill_refuses_before_undoing_anything_when_one_run_cannot_be_undone(
        database_url: str, tmp_path: Path) -> None:
    """Two months of one key each: the backfill inserts 3 rows in each; another writer then
    deletes one row its first run inserted, so that run (the last to be undone) cannot be."""
    insert_curtailment(database_url, [("2023-11-10", 5, "A", "-2"), ("2023-12-10", 7, "B", "-3")])
    insert_difficulty(database_url, {"2023-11-10": "61030681983175",
                                     "2023-12-10": "67305906902031.39"})
    backfill = cli(database_url, tmp_path, "run")["backfill_id"]
    first_run = execute(database_url, "SELECT min(id) FROM reconciliation_runs")[0][0]
    execute(database_url, """DELETE FROM historical_bitcoin_calculations WHERE id = (
        SELECT min(c.id) FROM historical_bitcoin_calculations c
        JOIN reconciliation_runs r ON r.month = to_char(c.settlement_date, 'YYYY-MM')
        WHERE r.id = $1)""", (first_run,))
    before = execute(database_url, EXPORT)

    result = engine(database_url, tmp_path, "undo", "--backfill", str(backfill))

    assert result.exit_code == 2
    assert result.output == (f"error: 1 of the 3 row(s) run {first_run} inserted were changed or "
                             "removed since; undo the later runs first (backfill "
                             f"{backfill}: nothing was undone)\n")
    assert execute(database_url, EXPORT) == before  # the newer run was not undone either
    assert execute(database_url, UNDONE) == [(0,)]


def test_undo_of_an_unknown_backfill_is_one_clear_line(database_url: str, tmp_path: Path) -> None:
    result = engine(database_url, tmp_path, "undo", "--backfill", "4711")

    assert result.exit_code == 2
    assert result.output == ("error: backfill 4711 has no run left to undo (unknown, already "
                             "undone, or it changed nothing)\n")
