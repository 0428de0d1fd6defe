"""`engine run` against a real PostgreSQL: plans, restarts after SIGKILL, concurrent runners,
retries of real transient failures, data errors, stale rows and busy months."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.demo import fill_database
from engine.errors import InputError
from engine.month import locks
from engine.months import Month
from engine.operations.backfill import BackfillRequest, BackfillResult, Event, RetryPolicy, run_backfill
from engine.operations.selection import order_months, parse_selection
from engine.store import db
from engine.store.config import Settings
from tests.conftest import execute, insert_curtailment, insert_difficulty

#: Three small (summer) demo months in three years: 72,753 expected rows, 25,546 present.
SUMMERS = ("2022-06", "2023-06", "2024-06")
FAST_RETRY = RetryPolicy(attempts=3, base_seconds=0.05, cap_seconds=0.2)
runner = CliRunner()


def demo(url: str, *months: str) -> int:
    """Fill the empty test database with demo months; return the expected rows."""
    return fill_database(url, [Month.parse(m) for m in months], embedded=False).expected_rows


def backfill(settings: Settings, on_event=None, **options) -> BackfillResult:
    options.setdefault("retry", FAST_RETRY)
    return run_backfill(settings, BackfillRequest(**options), on_event=on_event)


def key_counts(url: str) -> tuple[int, int]:
    """(rows, distinct keys) of the calculations table."""
    return execute(url, """SELECT count(*), count(DISTINCT (settlement_date, settlement_period,
                                  farm_id, miner_model)) FROM historical_bitcoin_calculations""")[0]


def exact_rows(url: str) -> tuple[int, int]:
    """(expected rows the source implies, those present) across every month."""
    rows = execute(url, """
        WITH keys AS (SELECT settlement_date, settlement_period, farm_id FROM curtailment_records
                      GROUP BY 1, 2, 3 HAVING sum(abs(volume)) > 0)
        SELECT 3 * count(*), (SELECT count(*) FROM historical_bitcoin_calculations c
                              JOIN keys USING (settlement_date, settlement_period, farm_id))
        FROM keys""")
    return int(rows[0][0]), int(rows[0][1])


def month_progress(url: str) -> dict[str, tuple]:
    rows = execute(url, """SELECT month, status, attempts, retries, last_error, last_error_kind
                           FROM reconciliation_progress ORDER BY month""")
    return {r[0]: tuple(r[1:]) for r in rows}


def engine_process(url: str, data_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "ENGINE_DATABASE_URL": url, "ENGINE_DATA_DIR": str(data_dir)}
    return subprocess.Popen([sys.executable, "-c", "from engine.cli import main; main()", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def engine(url: str, data_dir: Path, *args: str, env_extra: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env={"ENGINE_DATABASE_URL": url,
                                              "ENGINE_DATA_DIR": str(data_dir), **(env_extra or {})})


def seed_two_months(url: str) -> None:
    """2023-11 and 2023-12, one qualifying key each (3 expected rows each)."""
    insert_curtailment(url, [("2023-11-10", 5, "A", "-2"), ("2023-12-10", 7, "B", "-3")])
    insert_difficulty(url, {"2023-11-10": "61030681983175", "2023-12-10": "67305906902031.39"})


# --- plan -------------------------------------------------------------------------------------

def test_plan_order_is_2024_newest_first_then_2023_from_december_then_2022():
    months = [Month(y, m) for y in (2021, 2022, 2023, 2024) for m in (1, 6, 12)]

    planned = order_months(months, "plan")

    assert [str(m) for m in planned] == [
        "2024-12", "2024-06", "2024-01", "2023-12", "2023-06", "2023-01",
        "2022-12", "2022-06", "2022-01", "2021-12", "2021-06", "2021-01"]
    assert order_months(months, "oldest") == sorted(months)
    assert order_months(months, "newest") == sorted(months, reverse=True)


def test_only_accepts_statuses_and_refuses_anything_else():
    assert parse_selection("failed,missing") == {"failed", "missing"}
    assert "completed" in parse_selection("all")
    with pytest.raises(InputError, match="--only takes"):
        parse_selection("failed,done")


def test_a_bad_order_or_selection_exits_2(database_url, tmp_path):
    assert engine(database_url, tmp_path, "run", "--order", "random").exit_code == 2
    result = engine(database_url, tmp_path, "run", "--only", "everything")
    assert result.exit_code == 2 and result.stderr.startswith("error: --only takes")


def test_an_unreachable_database_exits_2_with_one_masked_line(tmp_path):
    result = engine("postgresql://someone:hunter2@127.0.0.1:1/engine", tmp_path, "run")

    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "hunter2" not in result.output and "someone:***@" in result.stderr


# --- end to end -------------------------------------------------------------------------------

def test_run_reconciles_every_month_and_status_shows_100_percent(database_url, tmp_path):
    expected = demo(database_url, *SUMMERS)

    result = engine(database_url, tmp_path, "run", "--jobs", "2")
    status = json.loads(engine(database_url, tmp_path, "status", "--json").stdout)

    assert result.exit_code == 0, result.output
    plan_line = result.stderr.splitlines()[0]
    assert plan_line == "plan: 3 month(s), order plan, 2 at a time: 2024-06 2023-06 2022-06"
    assert "backfill 1 finished: 3 month(s) · 3 verified · 0 failed" in result.stdout
    assert status["overall"] == {"expected": expected, "present": expected, "missing": 0,
                                 "percent": 100.0}
    assert set(status["by_year"]) == {"2022", "2023", "2024"}
    assert all(c["percent"] == 100.0 for c in status["by_year"].values())
    assert all(c["percent"] == 100.0 for c in status["by_model"].values())
    assert status["months_by_status"] == {"completed": 3}
    assert key_counts(database_url)[0] == key_counts(database_url)[1]
    assert (tmp_path / "reports").is_dir()  # today's summary


def test_a_second_run_has_nothing_to_do_and_records_nothing(database_url, tmp_path):
    demo(database_url, "2022-06")
    assert engine(database_url, tmp_path, "run").exit_code == 0

    again = engine(database_url, tmp_path, "run")

    assert again.exit_code == 0
    assert "plan: nothing to do" in again.stderr and "left out: 1 completed" in again.stderr
    assert execute(database_url, "SELECT count(*) FROM reconciliation_backfills") == [(1,)]


def test_plan_only_prints_the_plan_and_does_nothing(database_url, tmp_path):
    demo(database_url, *SUMMERS)

    result = engine(database_url, tmp_path, "run", "--plan-only", "--order", "oldest", "--json")

    plan = json.loads(result.stdout)
    assert [m["month"] for m in plan["months"]] == list(SUMMERS)
    assert {m["selection"] for m in plan["months"]} == {"missing"}
    assert execute(database_url, "SELECT count(*) FROM reconciliation_runs") == [(0,)]


def test_a_killed_run_restarted_finishes_with_no_duplicates_and_no_lost_month(database_url, tmp_path):
    months = ("2022-04", "2022-05", "2022-06", "2022-07")
    demo(database_url, *months)
    expected, _ = exact_rows(database_url)
    first = engine_process(database_url, tmp_path, "run", "--jobs", "1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it inside the month after the first
        done, running = execute(database_url, """SELECT count(*) FILTER (WHERE status = 'completed'),
            count(*) FILTER (WHERE status = 'in_progress') FROM reconciliation_progress""")[0]
        if done >= 1 and running >= 1:
            break
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = month_progress(database_url)
    # The killed process's backend lets the month lock go once it notices the lost client.
    while execute(database_url, locks.HELD_MONTH_LOCKS, (locks.LOCK_CLASS,)):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    second = engine(database_url, tmp_path, "run", "--jobs", "2")

    assert 1 <= sum(status == "completed" for status, *_ in at_kill.values()) < len(months)
    assert second.exit_code == 0, second.output
    assert {m: row[0] for m, row in month_progress(database_url).items()} == dict.fromkeys(
        months, "completed")
    rows, keys = key_counts(database_url)
    assert rows == keys  # no duplicates
    assert exact_rows(database_url) == (expected, expected)  # no lost month
    # Almost always the kill lands inside a month (the poll waits for one in progress), whose
    # stale row the restart takes over; rarely that month finished in the last milliseconds.
    for killed_month in [m for m, row in at_kill.items() if row[0] == "in_progress"]:
        assert f"{killed_month} takeover: run " in second.stderr
        assert execute(database_url, """SELECT status, error FROM reconciliation_runs
                                    WHERE month = $1 ORDER BY id LIMIT 1""", (killed_month,)) == [
            ("failed", "abandoned: its process stopped; taken over by a later run")]


def test_two_concurrent_runners_produce_exactly_the_expected_rows(database_url, tmp_path):
    demo(database_url, *SUMMERS, "2022-07", "2023-07")
    expected, _ = exact_rows(database_url)

    runners = [engine_process(database_url, tmp_path / str(i), "run", "--jobs", "2")
               for i in range(2)]
    outputs = [r.communicate(timeout=120) for r in runners]

    assert [r.returncode for r in runners] == [0, 0], outputs
    assert exact_rows(database_url) == (expected, expected)
    rows, keys = key_counts(database_url)
    assert rows == keys
    assert set(r[0] for r in month_progress(database_url).values()) == {"completed"}
    # Each month was reconciled by one runner; the other skipped it or found it done.
    inserted = execute(database_url, """SELECT month, count(*) FILTER (WHERE
        (rows->>'inserted')::int > 0) FROM reconciliation_runs GROUP BY month""")
    assert all(n == 1 for _, n in inserted)


# --- retries ----------------------------------------------------------------------------------

def test_a_lock_timeout_is_retried_and_the_month_succeeds(database_url, tmp_path):
    """Another session holds a SHARE lock on the calculations table, so the merge's INSERT
    waits past lock_timeout (55P03); the lock is released after the first failed try."""
    seed_two_months(database_url)
    settings = Settings(database_url=database_url, data_dir=tmp_path, lock_timeout_ms=200)
    blocker = db.connect(database_url)
    with blocker.cursor() as cursor:
        cursor.execute("LOCK TABLE historical_bitcoin_calculations IN SHARE MODE")
    events: list[Event] = []

    def release_after_first_failure(event: Event) -> None:
        events.append(event)
        if event.kind == "retry":
            blocker.rollback()

    try:
        result = backfill(settings, release_after_first_failure, first=Month(2023, 12),
                          last=Month(2023, 12))
    finally:
        blocker.close()

    outcome = result.outcomes[0]
    assert outcome.status == "verified" and outcome.tries == 2 and outcome.inserted == 3
    assert "lock timeout" in next(e.detail for e in events if e.kind == "retry")
    status, attempts, retries, last_error, kind = month_progress(database_url)["2023-12"]
    assert (status, attempts, retries) == ("completed", 2, 1)
    assert last_error is None and kind is None  # a success clears the error; the run keeps it
    runs = execute(database_url, "SELECT status, error FROM reconciliation_runs ORDER BY id")
    assert [r[0] for r in runs] == ["failed", "verified"] and "lock timeout" in runs[0][1]
    assert result.exit_code == 0 and result.counts()["retries"] == 1


def test_a_lost_connection_is_retried_on_a_new_session(database_url, tmp_path, settings):
    """The engine's backend is terminated (pg_terminate_backend) just before the merge."""
    seed_two_months(database_url)
    killed: list[int] = []

    def terminate_once(event: Event) -> None:
        if event.kind == "step" and event.detail == "load" and not killed:
            pid = execute(database_url, """SELECT pid FROM pg_locks WHERE locktype = 'advisory'
                AND objid = 202312 AND granted AND database = (SELECT oid FROM pg_database
                WHERE datname = current_database())""")[0][0]
            killed.append(pid)
            execute(database_url, "SELECT pg_terminate_backend($1::int4)", (pid,))

    result = backfill(settings, terminate_once, first=Month(2023, 12), last=Month(2023, 12))

    assert killed and result.outcomes[0].status == "verified" and result.outcomes[0].tries == 2
    assert month_progress(database_url)["2023-12"][:3] == ("completed", 2, 1)
    assert key_counts(database_url) == (3, 3)
    # The run the lost connection left open was closed as failed, not left running.
    assert execute(database_url, "SELECT status FROM reconciliation_runs ORDER BY id") == [
        ("failed",), ("verified",)]


def test_transient_failures_that_outlast_the_retries_exit_75(database_url, tmp_path):
    seed_two_months(database_url)
    settings = Settings(database_url=database_url, data_dir=tmp_path, lock_timeout_ms=100)
    with db.connect(database_url) as blocker, blocker.cursor() as cursor:
        cursor.execute("LOCK TABLE historical_bitcoin_calculations IN SHARE MODE")
        result = backfill(settings, first=Month(2023, 12), last=Month(2023, 12),
                          retry=RetryPolicy(attempts=2, base_seconds=0.01, cap_seconds=0.02))
        blocker.rollback()

    assert result.outcomes[0].status == "failed" and result.outcomes[0].tries == 2
    assert result.outcomes[0].error_kind == "transient" and result.exit_code == 75
    status, attempts, retries, last_error, kind = month_progress(database_url)["2023-12"]
    assert (status, attempts, retries, kind) == ("failed", 2, 1, "transient")
    assert "lock timeout" in last_error


def test_a_data_error_is_not_retried_and_the_other_months_go_on(database_url, settings):
    seed_two_months(database_url)
    insert_curtailment(database_url, [("2023-11-20", 9, "C", "-1")])  # no difficulty that day
    events: list[Event] = []

    result = backfill(settings, events.append)

    outcomes = {str(o.month): o for o in result.outcomes}
    assert outcomes["2023-11"].status == "failed" and outcomes["2023-11"].tries == 1
    assert outcomes["2023-11"].error_kind == "data"
    assert outcomes["2023-12"].status == "verified"
    assert not [e for e in events if e.kind == "retry"]
    status, attempts, retries, last_error, kind = month_progress(database_url)["2023-11"]
    assert (status, attempts, retries, kind) == ("failed", 1, 0, "data")
    assert "2023-11-20" in last_error
    assert result.exit_code == 2


# --- concurrency ------------------------------------------------------------------------------

def test_a_stale_in_progress_month_is_taken_over(database_url, settings, caplog):
    seed_two_months(database_url)
    execute(database_url, """INSERT INTO reconciliation_runs (month, command, formula, status, pid)
                             VALUES ('2023-12', 'run', 'v1', 'running', 999999)""")
    execute(database_url, """INSERT INTO reconciliation_progress (month, status, attempts,
                             last_run_id) VALUES ('2023-12', 'in_progress', 1, 1)""")
    events: list[Event] = []

    result = backfill(settings, events.append)

    assert [str(o.month) for o in result.outcomes if o.status == "verified"] == ["2023-12", "2023-11"]
    assert [e.detail for e in events if e.kind == "takeover"] == ["run 1 (pid 999999)"]
    assert execute(database_url, "SELECT status, error FROM reconciliation_runs WHERE id = 1") == [
        ("failed", "abandoned: its process stopped; taken over by a later run")]
    assert month_progress(database_url)["2023-12"][:2] == ("completed", 2)


def test_a_busy_month_is_skipped_with_a_clear_message(database_url, settings, caplog):
    seed_two_months(database_url)
    with db.connect(database_url) as other, other.cursor() as cursor:
        assert locks.try_lock(cursor, locks.month_lock_key(Month(2023, 12)))
        other.commit()
        caplog.set_level("INFO")
        result = backfill(settings, busy_grace=0.2)

    outcomes = {str(o.month): o for o in result.outcomes}
    assert outcomes["2023-11"].status == "verified"
    assert (outcomes["2023-12"].status, outcomes["2023-12"].reason) == ("skipped", "busy")
    assert "2023-12 is being reconciled by another process" in caplog.text
    assert result.exit_code == 0
    assert "2023-12" not in month_progress(database_url)


def test_with_wait_a_busy_month_is_done_once_the_other_process_lets_go(database_url, settings):
    seed_two_months(database_url)
    other = db.connect(database_url)
    with other.cursor() as cursor:
        locks.try_lock(cursor, locks.month_lock_key(Month(2023, 12)))
    other.commit()
    threading.Timer(0.5, other.close).start()

    result = backfill(settings, wait_busy=True)

    assert {o.status for o in result.outcomes} == {"verified"}
    assert key_counts(database_url) == (6, 6)


def test_each_run_row_names_the_worker_that_ran_its_month(database_url, settings):
    seed_two_months(database_url)

    result = backfill(settings, jobs=2)

    assert result.exit_code == 0
    workers = [w for (w,) in execute(database_url, "SELECT worker FROM reconciliation_runs")]
    assert len(workers) == 2
    assert all(w.startswith(f"{socket.gethostname()}:{os.getpid()}/backfill-") for w in workers), workers
