"""`engine status --check`: each verified month's per-day fingerprints against the database.
A record moved to another period, a calculation edited or deleted after the month completed:
each is found, the changed calculations make the month `regressed`, and `engine run` (and
`--only regressed`) reconciles it again. An untouched database reports nothing.

Two months, 2023-11 and 2023-12, one qualifying key each (3 rows each), both run and verified.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import execute, insert_curtailment
from tests.test_backfill import engine, seed_two_months

CALCULATIONS = "historical_bitcoin_calculations"


def verified_two_months(url: str, data_dir: Path) -> None:
    seed_two_months(url)
    assert engine(url, data_dir, "run").exit_code == 0


def check(url: str, data_dir: Path, *args: str) -> tuple[int, dict]:
    result = engine(url, data_dir, "status", "--check", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def statuses(url: str) -> dict[str, str]:
    return dict(execute(url, "SELECT month, status FROM reconciliation_progress"))


def test_an_untouched_database_reports_nothing(database_url, tmp_path):
    verified_two_months(database_url, tmp_path)

    code, result = check(database_url, tmp_path)

    assert code == 0
    assert result["checked"] == ["2023-11", "2023-12"] and result["changes"] == []
    assert statuses(database_url) == {"2023-11": "completed", "2023-12": "completed"}


def test_a_record_moved_to_another_period_is_found_on_its_day(database_url, tmp_path):
    verified_two_months(database_url, tmp_path)
    execute(database_url, "UPDATE curtailment_records SET settlement_period = 8 "
                          "WHERE settlement_date = '2023-12-10'")

    code, result = check(database_url, tmp_path)

    assert code == 1
    [change] = result["changes"]
    assert change["month"] == "2023-12" and change["source_changed_days"] == ["2023-12-10"]
    assert change["calculations_changed_days"] == [] and change["status"] == "completed"
    scheduled = json.loads(engine(database_url, tmp_path, "scheduled", "--json").stdout)
    assert {c["month"]: c["reason"] for c in scheduled["changes"]} == {"2023-12": "changed"}


def test_a_record_moved_to_another_farm_is_found(database_url, tmp_path):
    verified_two_months(database_url, tmp_path)
    execute(database_url, "UPDATE curtailment_records SET farm_id = 'Z' "
                          "WHERE settlement_date = '2023-11-10'")

    code, result = check(database_url, tmp_path)

    assert code == 1 and [c["month"] for c in result["changes"]] == ["2023-11"]


def test_a_calculation_edited_after_completion_makes_the_month_regressed(database_url, tmp_path):
    verified_two_months(database_url, tmp_path)
    execute(database_url, f"UPDATE {CALCULATIONS} SET bitcoin_mined = bitcoin_mined + 0.00000001 "
                          "WHERE settlement_date = '2023-11-10' AND miner_model = 'S9'")

    code, result = check(database_url, tmp_path)

    assert code == 1
    [change] = result["changes"]
    assert change["month"] == "2023-11" and change["status"] == "regressed"
    assert change["calculations_changed_days"] == ["2023-11-10"]
    assert statuses(database_url)["2023-11"] == "regressed"
    status = json.loads(engine(database_url, tmp_path, "status", "--json").stdout)
    assert status["months_by_status"] == {"completed": 1, "regressed": 1}


def test_a_calculation_deleted_after_completion_is_found_and_run_puts_it_back(database_url, tmp_path):
    verified_two_months(database_url, tmp_path)
    execute(database_url, f"DELETE FROM {CALCULATIONS} WHERE settlement_date = '2023-12-10' "
                          "AND miner_model = 'M20S'")

    code, result = check(database_url, tmp_path)
    assert code == 1 and result["changes"][0]["status"] == "regressed"

    rerun = engine(database_url, tmp_path, "run", "--only", "regressed", "--json")

    assert rerun.exit_code == 0, rerun.stdout
    assert statuses(database_url) == {"2023-11": "completed", "2023-12": "completed"}
    assert execute(database_url, f"SELECT count(*) FROM {CALCULATIONS}") == [(6,)]
    code, result = check(database_url, tmp_path)
    assert code == 0 and result["changes"] == []


def test_the_range_limits_what_is_checked(database_url, tmp_path):
    verified_two_months(database_url, tmp_path)
    insert_curtailment(database_url, [("2023-11-11", 1, "Q", "-1")])

    assert check(database_url, tmp_path, "--from", "2023-12", "--to", "2023-12")[0] == 0
    assert check(database_url, tmp_path, "--from", "2023-11")[0] == 1


def test_from_without_check_and_a_backwards_range_are_one_line_errors(database_url, tmp_path):
    verified_two_months(database_url, tmp_path)

    alone = engine(database_url, tmp_path, "status", "--from", "2023-11")
    backwards = engine(database_url, tmp_path, "status", "--check", "--from", "2023-12",
                       "--to", "2023-11")

    assert alone.exit_code == 2 and "--check" in alone.output
    assert backwards.exit_code == 2 and "after" in backwards.output
