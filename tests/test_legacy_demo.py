"""The demo with the older writers' damage: `engine diff` finds exactly what was seeded,
`engine run --fix all` repairs all of it, and `engine undo --backfill` puts it all back."""

from __future__ import annotations

import json
from pathlib import Path

from engine.legacy import DEMO_DAMAGE
from tests.conftest import execute
from tests.test_backfill import engine

MONTHS = ("--from", "2023-12", "--to", "2024-01")
# The demo's own backlog writes 40 rows with the fallback difficulty.
BACKLOG_FALLBACK = 40
EXPORT = """SELECT id, settlement_date, settlement_period, farm_id, miner_model,
                   bitcoin_mined::text, difficulty::text, calculated_at
            FROM historical_bitcoin_calculations ORDER BY id"""
# Rows no qualifying curtailment implies: no record of the farm with |volume| > 0 in that
# period, or a model the engine does not know. Counted here without the engine.
ORPHANS = """
WITH qualifying AS (
    SELECT settlement_date, settlement_period, farm_id FROM curtailment_records
    GROUP BY settlement_date, settlement_period, farm_id HAVING sum(abs(volume)) > 0)
SELECT count(*) FROM historical_bitcoin_calculations c
LEFT JOIN qualifying q USING (settlement_date, settlement_period, farm_id)
WHERE q.farm_id IS NULL OR c.miner_model NOT IN ('S19J_PRO', 'S9', 'M20S')
"""


def cli(url: str, data_dir: Path, *args: str, code: int = 0) -> dict:
    result = engine(url, data_dir, *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_every_seeded_cause_is_found_repaired_and_put_back(database_url: str, tmp_path: Path) -> None:
    demo = cli(database_url, tmp_path, "demo", "--months", "2023-12..2024-01", "--legacy-damage")
    seeded = demo["data"]["damage"]
    orphans = execute(database_url, ORPHANS)[0][0]

    found = cli(database_url, tmp_path, "diff", *MONTHS, code=1)

    assert seeded.keys() == DEMO_DAMAGE.keys()
    assert {k: v for k, v in seeded.items() if k != "per_record_rows"} == {
        k: v for k, v in DEMO_DAMAGE.items() if k != "per_record_rows"}
    assert seeded["per_record_rows"] >= 2 * DEMO_DAMAGE["per_record_rows"]  # ≥ 2 rows a key
    assert found["causes"] == seeded | {
        "fallback_difficulty": seeded["fallback_difficulty"] + BACKLOG_FALLBACK}
    assert found["totals"]["drift"] == sum(found["causes"].values()) - seeded["per_record_rows"]
    assert found["totals"]["duplicates"] == seeded["per_record_rows"]
    assert found["totals"]["orphans"] == orphans > 0
    assert found["totals"]["missing"] == 0  # the demo reconciled its backlog

    before = execute(database_url, EXPORT)
    run = cli(database_url, tmp_path, "run", "--fix", "all")
    fixed = cli(database_url, tmp_path, "diff", *MONTHS)

    assert run["counts"]["verified"] == 2 and run["plan"]["months"]
    assert fixed["differs"] is False and fixed["months_with_summary_differences"] == 0
    assert all(n == 0 for kind, n in fixed["totals"].items() if kind not in ("expected", "present"))
    assert execute(database_url, ORPHANS)[0][0] == 0

    undone = cli(database_url, tmp_path, "undo", "--backfill", str(run["backfill_id"]))

    runs = [r["run_id"] for r in undone["runs"]]
    assert runs == sorted(runs, reverse=True)  # the newest run first
    assert sorted(r["month"] for r in undone["runs"]) == ["2023-12", "2024-01"]
    assert all(r["summaries"]["verified"] for r in undone["runs"])
    assert execute(database_url, EXPORT) == before  # every row, id and digit as it was


def test_undo_of_an_unknown_backfill_is_one_clear_line(database_url: str, tmp_path: Path) -> None:
    result = engine(database_url, tmp_path, "undo", "--backfill", "4711")

    assert result.exit_code == 2
    assert result.output == ("error: backfill 4711 has no run left to undo (unknown, already "
                             "undone, or it changed nothing)\n")
