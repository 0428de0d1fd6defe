"""`engine undo` and `engine plan` / `engine apply` against a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import PlanOutdated, UndoRefused
from engine.month.session import open_session
from engine.operations.review import apply_plan, make_plan, undo_run
from engine.repairs.plans import read, write
from engine.store.config import Settings
from tests.conftest import calculations, execute, insert_curtailment
from tests.test_cli import engine
from tests.test_pipeline import DECEMBER, seed_december
from tests.test_repair import CALCS, reconcile, seed_damaged_december

#: Every column, numeric as text: equal exports mean a byte-for-byte equal table.
EXPORT = f"""SELECT id, settlement_date, settlement_period, farm_id, miner_model,
             bitcoin_mined::text, difficulty::text, calculated_at FROM {CALCS} ORDER BY id"""


def export(url: str) -> list[tuple]:
    return execute(url, EXPORT)


def undo(settings: Settings, run_id: int):
    with open_session(settings) as session:
        return undo_run(session, run_id)


def test_undo_of_a_fix_all_run_restores_the_table_byte_for_byte(settings, database_url):
    """The damaged December plus farm B's three rows deleted (missing): `--fix all` inserts 3,
    updates 2, deletes 2; undo puts every row back with its id, value, scale and timestamp
    (the per-record rows have 15 and 18 decimals)."""
    seed_damaged_december(database_url, settings)
    execute(database_url, f"DELETE FROM {CALCS} WHERE farm_id = 'B'")
    before = export(database_url)

    fixed = reconcile(settings, fix=["all"])
    undone = undo(settings, fixed.run_id)

    assert (fixed.rows["inserted"], fixed.rows["updated"], fixed.rows["deleted"]) == (3, 2, 2)
    assert (undone.restored.removed, undone.restored.restored, undone.restored.reinserted) == (3, 2, 2)
    assert export(database_url) == before
    assert undone.summaries.verified and undone.exit_code == 0
    runs = execute(database_url, "SELECT id, command, undo_of, undone_by FROM reconciliation_runs "
                                 "WHERE id >= $1 ORDER BY id", (fixed.run_id,))
    assert runs == [(fixed.run_id, "month", None, undone.undo_run_id),
                    (undone.undo_run_id, "undo", fixed.run_id, None)]
    assert execute(database_url, "SELECT status FROM reconciliation_progress") == [("not_started",)]


def test_a_run_is_undone_once_and_an_undo_is_not_undone(settings, database_url):
    seed_december(database_url)
    run = reconcile(settings).run_id
    undone = undo(settings, run)

    with pytest.raises(UndoRefused, match=f"run {run} was already undone by run {undone.undo_run_id}"):
        undo(settings, run)
    with pytest.raises(UndoRefused, match=f"run {undone.undo_run_id} is an undo \\(of run {run}\\)"):
        undo(settings, undone.undo_run_id)
    assert calculations(database_url) == []


def test_undo_refuses_when_a_later_change_touched_the_runs_rows_and_changes_nothing(
        settings, database_url):
    seed_damaged_december(database_url, settings)
    fixed = reconcile(settings, fix=["drift"])
    execute(database_url, f"UPDATE {CALCS} SET bitcoin_mined = 9 WHERE farm_id = 'C' AND miner_model = 'S9'")
    before = export(database_url)

    with pytest.raises(UndoRefused, match=r"1 of the 1 row\(s\) run \d+ updated were changed since"):
        undo(settings, fixed.run_id)

    assert export(database_url) == before


def test_undo_refuses_to_put_back_duplicates_the_unique_index_now_forbids(settings, database_url):
    seed_damaged_december(database_url, settings)
    fixed = reconcile(settings, fix=["duplicates"])
    execute(database_url, f"CREATE UNIQUE INDEX historical_bitcoin_calculations_key ON {CALCS} "
                          "(settlement_date, settlement_period, farm_id, miner_model)")
    before = export(database_url)

    with pytest.raises(UndoRefused, match="the unique key index now forbids putting them back"):
        undo(settings, fixed.run_id)

    assert export(database_url) == before


def test_undo_cli_prints_what_it_put_back(settings, database_url, tmp_path):
    seed_december(database_url)
    first = engine("month", "2023-12", "--json", url=database_url, data_dir=tmp_path)
    run = json.loads(first.stdout)["run_id"]

    result = engine("undo", str(run), url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0, result.output
    assert f"run {run} (2023-12) undone by run {run + 1}: 9 inserted row(s) removed" in result.stdout
    assert calculations(database_url) == []


# --- plan and apply -----------------------------------------------------------------------------


def plan(settings: Settings, path: Path, fix: tuple[str, ...] = ("all",)) -> Path:
    with open_session(settings) as session:
        return write(make_plan(session, DECEMBER, fix=fix), path)


def test_apply_changes_exactly_what_the_plan_says(settings, database_url, tmp_path):
    """The damaged December: the plan lists 2 updates and 2 deletes (no inserts); applying
    it leaves the table as `--fix all` would."""
    seed_damaged_december(database_url, settings)
    path = plan(settings, tmp_path / "plan.parquet")
    planned = read(path)

    with open_session(settings) as session:
        result = apply_plan(session, path)

    assert planned.counts() == {"insert": {}, "update": {"drift": 1, "duplicates": 1},
                                "delete": {"duplicates": 1, "orphans": 1}}
    assert result.status == "verified" and result.fix == ("drift", "duplicates", "orphans")
    assert len(calculations(database_url)) == 9
    assert execute(database_url, "SELECT command, arguments->>'plan' FROM reconciliation_runs "
                                 "ORDER BY id DESC LIMIT 1") == [("apply", planned.fingerprint)]


def test_apply_refuses_when_the_source_changed_since_the_plan(settings, database_url, tmp_path):
    seed_damaged_december(database_url, settings)
    path = plan(settings, tmp_path / "plan.parquet")
    insert_curtailment(database_url, [("2023-12-02", 47, "D", "-1")])
    before = export(database_url)

    with open_session(settings) as session, pytest.raises(PlanOutdated, match="source of 2023-12 changed"):
        apply_plan(session, path)

    assert export(database_url) == before


def test_apply_refuses_when_the_rows_it_changes_moved_since_the_plan(settings, database_url, tmp_path):
    seed_damaged_december(database_url, settings)
    path = plan(settings, tmp_path / "plan.parquet")
    execute(database_url, f"DELETE FROM {CALCS} WHERE settlement_period = 2")  # the orphan
    before = export(database_url)

    with open_session(settings) as session, pytest.raises(
            PlanOutdated, match=r"1 planned change\(s\) no longer apply and 0 new one"):
        apply_plan(session, path)

    assert export(database_url) == before


def test_plan_and_apply_on_the_command_line(settings, database_url, tmp_path):
    seed_damaged_december(database_url, settings)
    path = tmp_path / "plan.parquet"

    planned = engine("plan", "2023-12", "--fix", "all", "-o", str(path), url=database_url,
                     data_dir=tmp_path)
    applied = engine("apply", str(path), url=database_url, data_dir=tmp_path)
    again = engine("apply", str(path), url=database_url, data_dir=tmp_path)
    not_a_plan = engine("apply", str(tmp_path / "diffs/drift/month=2023-12/part-0.parquet"),
                        url=database_url, data_dir=tmp_path)

    assert planned.exit_code == 0 and "4 change(s): update 1 drift" in planned.stdout
    assert applied.exit_code == 0 and "verified" in applied.stdout
    assert again.exit_code == 2 and "changed since the plan was made" in again.stderr
    assert not_a_plan.exit_code == 2 and "is not a plan file" in not_a_plan.stderr
