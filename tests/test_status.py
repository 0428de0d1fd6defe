"""`engine status`, `status-month`, `report` and `status --watch`: read from the database."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from engine.month.session import open_session
from engine.months import Month
from engine.operations.backfill import BackfillRequest, run_backfill
from engine.reporting.status import get_status
from tests.conftest import execute, insert_curtailment, insert_difficulty
from tests.test_backfill import FAST_RETRY, demo, engine, engine_process
from tests.test_pipeline import seed_december

GOLDEN = Path(__file__).parent / "golden"
_VOLATILE = {"seconds", "sequential_seconds", "seconds_per_expected_row",
             "seconds_per_missing_row", "speedup", "elapsed"}


def seed_three_months(url: str) -> None:
    """- 2023-12: seed_december's 9 expected rows; after the run one (farm C, S9) is deleted,
      so 8 of 9 are present and 2023-12-02 is the incomplete day;
    - 2023-11: one key on 2023-11-10, 3 rows, all reconciled;
    - 2024-01: one key on 2024-01-05 with no difficulty: the month fails, 3 rows missing.
    In all: 15 expected, 11 present, 4 missing; 2023 is 11 of 12, 2024 0 of 3."""
    seed_december(url)
    insert_curtailment(url, [("2023-11-10", 5, "A", "-2"), ("2024-01-05", 1, "B", "-1")])
    insert_difficulty(url, {"2023-11-10": "61030681983175"})


@pytest.fixture
def reconciled(database_url, settings) -> str:
    seed_three_months(database_url)
    run_backfill(settings, BackfillRequest(jobs=1, retry=FAST_RETRY))  # run ids in plan order
    execute(database_url, """DELETE FROM historical_bitcoin_calculations
                             WHERE farm_id = 'C' AND miner_model = 'S9'""")
    return database_url


def normalized(payload: Any) -> Any:
    """The payload with times and measured speeds replaced, so it can be compared."""
    if isinstance(payload, dict):
        return {k: ("<time>" if (k.endswith("_at") and v) else 0 if k in _VOLATILE else normalized(v))
                for k, v in payload.items()}
    if isinstance(payload, list):
        return [normalized(v) for v in payload]
    return payload


def matches_golden(payload: Any, name: str) -> bool:
    golden = GOLDEN / name
    if os.environ.get("ENGINE_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(normalized(payload), indent=2) + "\n")
    return normalized(payload) == json.loads(golden.read_text())


def test_status_json_matches_the_golden_file(reconciled, tmp_path):
    result = engine(reconciled, tmp_path, "status", "--json")

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["overall"] == {"expected": 15, "present": 11, "missing": 4, "percent": 73.33}
    assert payload["by_year"]["2023"]["percent"] == 91.66  # floored: 100% means complete
    assert payload["months_by_status"] == {"completed": 2, "failed": 1}
    assert matches_golden(payload, "status.json")


def test_status_text_shows_years_models_and_what_is_left(reconciled, tmp_path):
    result = engine(reconciled, tmp_path, "status")

    lines = result.stdout.splitlines()
    assert lines[0] == "reconciled  73.33% (11 of 15, 4 missing)"
    assert lines[1] == "by year     2023 91.66% · 2024 0.00%"
    assert lines[2] == "by model    M20S 80.00% · S19J_PRO 80.00% · S9 60.00%"
    assert lines[3] == "months      3 · 2 completed · 1 failed"
    assert any(line.startswith("  2024-01 failed") and "2024-01-05" in line for line in lines)


def test_status_month_lists_the_incomplete_days_first(reconciled, tmp_path):
    result = engine(reconciled, tmp_path, "status-month", "2023-12", "--json")

    payload = json.loads(result.stdout)
    assert [d["date"] for d in payload["days"]] == ["2023-12-02", "2023-12-01"]
    assert payload["days"][0]["missing"] == {"M20S": 0, "S19J_PRO": 0, "S9": 1}
    assert payload["days_incomplete"] == 1
    assert matches_golden(payload, "status_month_2023-12.json")
    text = engine(reconciled, tmp_path, "status-month", "2023-12").stdout
    assert "2 day(s) with curtailment, 1 incomplete" in text


def test_report_lists_remaining_work_worst_first_and_failures(reconciled, tmp_path):
    result = engine(reconciled, tmp_path, "report", "--json")

    payload = json.loads(result.stdout)
    assert [m["month"] for m in payload["remaining_months"]] == ["2024-01", "2023-12"]
    assert [d["date"] for d in payload["remaining_days"]] == ["2024-01-05", "2023-12-02"]
    assert payload["failures"][0]["month"] == "2024-01"
    assert "2024-01-05" in payload["failures"][0]["last_error"]
    assert payload["estimate"]["remaining_rows"] == 4 and payload["estimate"]["basis_runs"] == 2
    assert payload["estimate"]["seconds"] > 0
    assert matches_golden(payload, "report.json")


def test_report_markdown_writes_the_report_and_a_daily_summary(reconciled, tmp_path):
    result = engine(reconciled, tmp_path, "report", "--format", "markdown")

    assert result.exit_code == 0, result.output
    reports = tmp_path / "reports"
    written = sorted(p.name for p in reports.iterdir())
    assert len([n for n in written if n.startswith("report-")]) == 1
    day = execute(reconciled, "SELECT current_date::text")[0][0]
    assert f"{day}.md" in written and f"{day}.json" in written
    report = next(reports.glob("report-*.md")).read_text()
    assert "## Remaining months, worst first" in report
    assert "| 2024-01 | failed | 3 | 0 | 3 | 0.00 |" in report
    summary = (reports / f"{day}.md").read_text()
    assert "- **Runs:** 3 over 3 month(s): 1 failed, 2 verified" in summary


def test_a_bad_format_exits_2(database_url, tmp_path):
    assert engine(database_url, tmp_path, "report", "--format", "html").exit_code == 2


def test_status_watch_shows_the_newest_backfill_from_the_database(reconciled, tmp_path):
    result = engine(reconciled, tmp_path, "status", "--watch", "--json")

    view = json.loads(result.stdout)
    assert view["state"] == "failed" and view["months_total"] == 3
    assert (view["done"], view["failed"], view["rows_inserted"]) == (2, 1, 12)
    assert view["success_rate"] == 66.7
    text = engine(reconciled, tmp_path, "status", "--watch").stdout
    assert text.startswith("run 1 failed: 2/3 done · 0 running · 1 failed")


def test_status_of_a_database_without_runs(database_url, tmp_path):
    insert_curtailment(database_url, [("2023-12-10", 7, "B", "-3")])

    payload = json.loads(engine(database_url, tmp_path, "status", "--json").stdout)
    watch = engine(database_url, tmp_path, "status", "--watch")

    assert payload["overall"]["missing"] == 3 and payload["months_by_status"] == {"not_started": 1}
    assert payload["last_run"] is None and payload["last_backfill"] is None
    assert watch.stdout.strip() == "no backfill has run yet"


def test_orphans_and_duplicates_do_not_count_as_present(database_url, settings):
    seed_december(database_url)
    run_backfill(settings, BackfillRequest(first=Month(2023, 12), last=Month(2023, 12)))
    execute(database_url, "DROP INDEX historical_bitcoin_calculations_key")
    execute(database_url, """INSERT INTO historical_bitcoin_calculations (settlement_date,
        settlement_period, farm_id, miner_model, bitcoin_mined, difficulty)
        SELECT settlement_date, settlement_period + 1, farm_id, miner_model, 1, 1
        FROM historical_bitcoin_calculations UNION ALL
        SELECT settlement_date, settlement_period, farm_id, miner_model, 1, 1
        FROM historical_bitcoin_calculations""")
    with open_session(settings) as session, session.transaction() as cursor:
        status = get_status(cursor, [m.name for m in session.models])

    assert (status.overall.expected, status.overall.present) == (9, 9)


def test_status_watch_follows_a_run_in_another_process_until_it_ends(database_url, tmp_path):
    demo(database_url, "2022-05", "2022-06", "2022-07")
    run = engine_process(database_url, tmp_path / "run", "run", "--jobs", "1")
    deadline = time.monotonic() + 60
    while not execute(database_url, "SELECT EXISTS (SELECT FROM reconciliation_runs)")[0][0]:
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the run started no month within 60 s"
        time.sleep(0.02)

    watched = engine(database_url, tmp_path, "status", "--watch", "--json", "--interval", "0.1")
    run.communicate(timeout=60)

    decoder, text, views = json.JSONDecoder(), watched.stdout.strip(), []
    while text:
        view, end = decoder.raw_decode(text)
        views.append(view)
        text = text[end:].strip()
    assert views[0]["state"] == "running" and views[0]["months_total"] == 3
    assert any(v["running"] for v in views)
    assert views[-1]["state"] == "completed" and views[-1]["done"] == 3
    assert views[-1]["success_rate"] == 100.0 and views[-1]["rows_inserted"] > 0
