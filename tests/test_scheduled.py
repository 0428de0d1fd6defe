"""`engine scheduled`: what changed since the last verified runs, overlaps, exit codes, and
the cron line and systemd units that start it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.month import locks
from engine.store import db
from tests.conftest import execute, insert_curtailment, insert_difficulty
from tests.test_backfill import engine, key_counts, seed_two_months

DEPLOY = Path(__file__).parent.parent / "deploy"


def scheduled(url: str, data_dir: Path) -> tuple[int, dict]:
    result = engine(url, data_dir, "scheduled", "--json")
    return result.exit_code, json.loads(result.stdout)


def reasons(payload: dict) -> dict[str, str]:
    return {c["month"]: c["reason"] for c in payload["changes"]}


def test_after_a_run_nothing_is_due_and_nothing_is_recorded(database_url, tmp_path):
    seed_two_months(database_url)
    assert engine(database_url, tmp_path, "run").exit_code == 0

    code, payload = scheduled(database_url, tmp_path)

    assert code == 0 and payload["changes"] == [] and payload["backfill"] is None
    assert execute(database_url, "SELECT count(*) FROM reconciliation_backfills") == [(1,)]


def test_new_records_and_a_new_month_are_reconciled_then_nothing_is_due(database_url, tmp_path):
    seed_two_months(database_url)
    engine(database_url, tmp_path, "run")
    insert_curtailment(database_url, [("2023-12-11", 1, "D", "-4"), ("2024-02-01", 2, "E", "-1")])
    insert_difficulty(database_url, {"2023-12-11": "67305906902031.39", "2024-02-01": "75502165623893"})

    code, payload = scheduled(database_url, tmp_path)
    again, after = scheduled(database_url, tmp_path)

    assert code == 0
    assert reasons(payload) == {"2024-02": "new", "2023-12": "changed"}
    assert "source 2023-12-11: 0 → 1 row(s)" in payload["changes"][1]["detail"]
    assert payload["backfill"]["counts"]["inserted"] == 6
    assert key_counts(database_url) == (12, 12)
    assert (again, after["changes"]) == (0, [])


def test_a_reingested_day_makes_its_month_due_only_when_a_value_changed(database_url, tmp_path):
    """Re-ingesting a day with the same values changes nothing the month is computed from;
    with one volume changed, the month is due."""
    seed_two_months(database_url)
    engine(database_url, tmp_path, "run")
    execute(database_url, "DELETE FROM curtailment_records WHERE settlement_date = '2023-11-10'")
    insert_curtailment(database_url, [("2023-11-10", 5, "A", "-2")])  # same values, new id

    same, unchanged = scheduled(database_url, tmp_path)
    execute(database_url, "DELETE FROM curtailment_records WHERE settlement_date = '2023-11-10'")
    insert_curtailment(database_url, [("2023-11-10", 5, "A", "-2.5")])
    code, payload = scheduled(database_url, tmp_path)

    assert same == 0 and unchanged["changes"] == []
    assert code == 0 and reasons(payload) == {"2023-11": "changed"}
    assert "source 2023-11-10: 1 row(s), values changed" in payload["changes"][0]["detail"]
    assert payload["backfill"]["months"][0]["status"] == "verified"


def test_a_failed_month_is_retried_and_exits_2_until_its_data_is_fixed(database_url, tmp_path):
    seed_two_months(database_url)
    insert_curtailment(database_url, [("2023-11-20", 9, "C", "-1")])  # no difficulty yet
    assert engine(database_url, tmp_path, "run").exit_code == 2

    code, payload = scheduled(database_url, tmp_path)
    insert_difficulty(database_url, {"2023-11-20": "61030681983175"})
    fixed, after = scheduled(database_url, tmp_path)

    assert code == 2 and reasons(payload) == {"2023-11": "failed"}
    assert fixed == 0 and after["backfill"]["months"][0]["status"] == "verified"


def test_an_overlapping_start_does_nothing_and_exits_0(database_url, tmp_path):
    seed_two_months(database_url)
    with db.connect(database_url) as other, other.cursor() as cursor:
        assert locks.try_lock(cursor, (locks.LOCK_CLASS, locks.SCHEDULER_LOCK))
        other.commit()

        result = engine(database_url, tmp_path, "scheduled")

    assert result.exit_code == 0
    assert result.stdout.strip() == "another `engine scheduled` is running: nothing done"
    assert execute(database_url, "SELECT count(*) FROM reconciliation_runs") == [(0,)]


def test_a_month_verified_before_fingerprints_were_kept_is_checked_once(database_url, tmp_path):
    seed_two_months(database_url)
    assert engine(database_url, tmp_path, "month", "2023-12").exit_code == 0
    execute(database_url, "DELETE FROM reconciliation_fingerprints")  # as an older version left it

    _, first = scheduled(database_url, tmp_path)
    _, second = scheduled(database_url, tmp_path)

    assert reasons(first) == {"2023-12": "unfingerprinted", "2023-11": "new"}
    assert second["changes"] == []


def test_a_month_verified_by_engine_month_is_not_due(database_url, tmp_path):
    seed_two_months(database_url)
    assert engine(database_url, tmp_path, "month", "2023-12").exit_code == 0

    _, first = scheduled(database_url, tmp_path)

    assert reasons(first) == {"2023-11": "new"}


def test_the_cron_line_and_the_systemd_units_start_engine_scheduled():
    cron = [line for line in (DEPLOY / "engine-scheduled.cron").read_text().splitlines()
            if line and not line.startswith("#")]
    service = (DEPLOY / "engine-scheduled.service").read_text()
    timer = (DEPLOY / "engine-scheduled.timer").read_text()

    assert len(cron) == 1
    minute, hour, day, month, weekday, user, command = cron[0].split(maxsplit=6)
    assert re.fullmatch(r"\*/\d+", minute) and (hour, day, month, weekday) == ("*",) * 4
    assert user == "engine" and "engine scheduled" in command
    assert "Type=oneshot" in service
    assert re.search(r"^ExecStart=.* engine scheduled$", service, re.M)
    assert "EnvironmentFile=/etc/engine/engine.env" in service
    assert re.search(r"^OnCalendar=\*:0/5$", timer, re.M)
    assert "Unit=engine-scheduled.service" in timer and "WantedBy=timers.target" in timer
