"""Faults: `engine month` killed with SIGKILL at known points, locks held by other sessions,
another writer inserting the same month. Each test asserts the table's content, not only an
exit code.

The engine runs as a real process (`engine month`), and it is stopped at a known point
without any hook in the product: another session holds a lock that the step needs, and
`pg_stat_activity` shows where the engine waits. A SHARE lock on the calculations table lets
the extract read but stops the merge's INSERT; a row lock on the month's progress row stops
the load's transaction after the merge, before its commit; an ACCESS EXCLUSIVE request queued
behind that transaction is granted at its commit and stops the verification's reading of the
month.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from engine.store import db
from tests.conftest import execute, insert_curtailment, insert_difficulty
from tests.test_property_engine import Key, insert_calculations, recompute, table

ENGINE = [sys.executable, "-c", "import sys; from engine.cli import main; sys.argv[0] = 'engine'; main()"]
CALCULATIONS = "historical_bitcoin_calculations"
SUMMARIES = ("bitcoin_daily_summaries", "bitcoin_monthly_summaries", "bitcoin_yearly_summaries")
DIFFICULTY = {date(2023, 12, 1): "100000000000000", date(2023, 12, 2): "67305906902031.39"}


def december_records() -> list[tuple[date, int, str, str]]:
    """2023-12-01 periods 1-4 and 2023-12-02 periods 45-48, farms A, B and C in every period,
    farm A with two records (-6 and -4), B -10, C -3.5: 24 qualifying keys, 72 rows."""
    records = []
    for day, periods in ((date(2023, 12, 1), range(1, 5)), (date(2023, 12, 2), range(45, 49))):
        for period in periods:
            records += [(day, period, "A", "-6"), (day, period, "A", "-4"),
                        (day, period, "B", "-10"), (day, period, "C", "-3.5")]
    return records


def seed_december(url: str) -> tuple[dict[Key, Decimal], list[Key]]:
    """The records above and their difficulty; the first 12 of the 72 rows (key order) are
    already present with their right values. Returns the right table (the row-by-row
    recomputation) and the present keys; a run inserts the other 60."""
    records = december_records()
    insert_curtailment(url, [(d.isoformat(), p, f, v) for d, p, f, v in records])
    insert_difficulty(url, {d.isoformat(): v for d, v in DIFFICULTY.items()})
    want = recompute(records, DIFFICULTY)
    assert len(want) == 72
    present = sorted(want)[:12]
    insert_calculations(url, [(key, want[key], DIFFICULTY[key[0]]) for key in present])
    return want, present


def bitcoin(url: str) -> dict[Key, Decimal]:
    """The calculations table as {key: bitcoin}; fails if a key is present twice."""
    rows = table(url)
    assert len(rows) == len({key for key, _, _ in rows}), "a key is present twice"
    return {key: value for key, value, _ in rows}


def summaries(url: str) -> list[tuple]:
    return [execute(url, f"SELECT count(*), coalesce(sum(bitcoin_mined), 0)::text FROM {t}")[0]
            for t in SUMMARIES]


def start_engine(url: str, data_dir: Path, *args: str, lock_timeout_ms: int = 120_000
                 ) -> subprocess.Popen:
    """`engine month 2023-12 --json` (or `args`) as a process of its own."""
    env = {**os.environ, "ENGINE_DATABASE_URL": url, "ENGINE_DATA_DIR": str(data_dir),
           "ENGINE_LOCK_TIMEOUT_MS": str(lock_timeout_ms)}
    return subprocess.Popen([*ENGINE, *(args or ("month", "2023-12", "--json"))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_engine(url: str, data_dir: Path, *args: str, lock_timeout_ms: int = 120_000,
               timeout: float = 120) -> subprocess.CompletedProcess:
    process = start_engine(url, data_dir, *args, lock_timeout_ms=lock_timeout_ms)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        return subprocess.CompletedProcess(process.args, -signal.SIGKILL, stdout, stderr)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


class Session:
    """Another client of the database, with its own transaction."""

    def __init__(self, url: str) -> None:
        self.conn = db.connect(url)
        self.cursor = self.conn.cursor()
        self.pid = int(db.fetch_all(self.cursor, "SELECT pg_backend_pid()")[0][0])

    def run(self, sql: str, params: tuple = ()) -> None:
        self.cursor.execute(sql, params or None)

    def close(self) -> None:
        self.conn.rollback()
        self.cursor.close()
        self.conn.close()


@contextmanager
def sessions(url: str, count: int) -> Iterator[list[Session]]:
    opened = [Session(url) for _ in range(count)]
    try:
        yield opened
    finally:
        for session in opened:
            session.close()


def waiting(url: str, ours: list[Session]) -> list[tuple[int, str]]:
    """(pid, query) of every other backend of this database that waits for a lock."""
    rows = execute(url, """SELECT pid, query FROM pg_stat_activity
                           WHERE datname = current_database() AND wait_event_type = 'Lock'""")
    return [(pid, query.lstrip()) for pid, query in rows if pid not in {s.pid for s in ours}]


def wait_for(condition: Callable[[], object], engine: subprocess.Popen | None = None,
             what: str = "", timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        if engine is not None and engine.poll() is not None:
            stderr = engine.stderr.read() if engine.stderr else ""
            pytest.fail(f"the engine exited {engine.returncode} before {what}: {stderr}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def engine_waits_on(url: str, ours: list[Session], prefix: str) -> Callable[[], bool]:
    return lambda: any(query.startswith(prefix) for _, query in waiting(url, ours))


def merged_uncommitted(url: str, ours: list[Session]) -> bool:
    """Whether the waiting engine's open transaction holds the calculations table's ROW
    EXCLUSIVE lock, which only its merge takes: the rows are inserted, not committed."""
    pids = [pid for pid, _ in waiting(url, ours)]
    rows = execute(url, f"""SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                            WHERE c.relname = '{CALCULATIONS}' AND l.mode = 'RowExclusiveLock'
                            AND l.granted""")
    return any(pid in pids for (pid,) in rows)


def kill(engine: subprocess.Popen) -> None:
    engine.send_signal(signal.SIGKILL)
    engine.communicate()
    assert engine.returncode == -signal.SIGKILL


def wait_until_engine_backends_are_gone(url: str, ours: list[Session]) -> None:
    """A killed client's backends end once they are no longer blocked."""
    def gone() -> bool:
        rows = execute(url, """SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                               AND backend_type = 'client backend' AND pid <> pg_backend_pid()""")
        return not [pid for (pid,) in rows if pid not in {s.pid for s in ours}]
    wait_for(gone, what="the killed engine's backends to end", timeout=30)


def month_status(url: str) -> tuple:
    return execute(url, """SELECT p.status, r.status FROM reconciliation_progress p
                           JOIN reconciliation_runs r ON r.id = p.last_run_id
                           WHERE p.month = '2023-12'""")[0]


def assert_rerun_completes_it(url: str, data_dir: Path, want: dict[Key, Decimal], inserted: int) -> None:
    rerun = run_engine(url, data_dir)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["status"] == "verified" and result["rows"]["inserted"] == inserted
    assert bitcoin(url) == want
    assert month_status(url) == ("completed", "verified")


# --- SIGKILL --------------------------------------------------------------------------------------

def kill_while_the_merge_waits(url: str, data_dir: Path) -> None:
    with sessions(url, 1) as [writer_lock]:
        writer_lock.run(f"LOCK TABLE {CALCULATIONS} IN SHARE MODE")  # readers pass, writers wait
        engine = start_engine(url, data_dir)
        wait_for(engine_waits_on(url, [writer_lock], f"INSERT INTO {CALCULATIONS}"),
                 engine, "the merge to wait")
        kill(engine)
    wait_until_engine_backends_are_gone(url, [])


@pytest.mark.slow
def test_killed_while_its_merge_waits_the_month_is_untouched_and_a_rerun_completes_it(
        database_url, tmp_path):
    want, present = seed_december(database_url)

    kill_while_the_merge_waits(database_url, tmp_path)

    assert bitcoin(database_url) == {key: want[key] for key in present}
    assert summaries(database_url) == [(0, "0")] * 3
    assert month_status(database_url) == ("in_progress", "running")
    assert_rerun_completes_it(database_url, tmp_path, want, inserted=60)


@pytest.mark.slow
def test_a_rerun_after_a_kill_closes_the_killed_run(database_url, tmp_path):
    seed_december(database_url)
    kill_while_the_merge_waits(database_url, tmp_path)

    assert run_engine(database_url, tmp_path).returncode == 0

    runs = execute(database_url, """SELECT status, finished_at IS NOT NULL
                                    FROM reconciliation_runs ORDER BY id""")
    assert runs[-1] == ("verified", True)
    assert runs[0] != ("running", False)


@pytest.mark.slow
def test_killed_after_its_merge_before_the_commit_nothing_of_the_month_is_visible(
        database_url, tmp_path):
    want, present = seed_december(database_url)
    with sessions(database_url, 2) as [writer_lock, progress_lock]:
        ours = [writer_lock, progress_lock]
        writer_lock.run(f"LOCK TABLE {CALCULATIONS} IN SHARE MODE")
        engine = start_engine(database_url, tmp_path)
        wait_for(engine_waits_on(database_url, ours, f"INSERT INTO {CALCULATIONS}"),
                 engine, "the merge to wait")
        progress_lock.run("UPDATE reconciliation_progress SET updated_at = updated_at "
                          "WHERE month = '2023-12'")
        writer_lock.conn.rollback()  # the merge runs; the progress update after it waits
        wait_for(engine_waits_on(database_url, ours, 'UPDATE "engine".reconciliation_progress'),
                 engine, "the load to wait after its merge")
        assert merged_uncommitted(database_url, ours)
        assert bitcoin(database_url) == {key: want[key] for key in present}  # not committed
        kill(engine)
    wait_until_engine_backends_are_gone(database_url, [])

    assert bitcoin(database_url) == {key: want[key] for key in present}
    assert summaries(database_url) == [(0, "0")] * 3
    assert month_status(database_url) == ("in_progress", "running")
    assert_rerun_completes_it(database_url, tmp_path, want, inserted=60)


@contextmanager
def paused_in_verification(url: str, data_dir: Path, meanwhile: str | None = None
                           ) -> Iterator[subprocess.Popen]:
    """`engine month 2023-12` stopped after its load committed, its verification's reading
    of the month waiting on an ACCESS EXCLUSIVE lock that is released when the block ends
    (after `meanwhile`, run and committed by the lock's holder, if given)."""
    with sessions(url, 3) as [writer_lock, progress_lock, exclusive]:
        ours = [writer_lock, progress_lock, exclusive]
        writer_lock.run(f"LOCK TABLE {CALCULATIONS} IN SHARE MODE")
        engine = start_engine(url, data_dir)
        wait_for(engine_waits_on(url, ours, f"INSERT INTO {CALCULATIONS}"),
                 engine, "the merge to wait")
        progress_lock.run("UPDATE reconciliation_progress SET updated_at = updated_at "
                          "WHERE month = '2023-12'")
        writer_lock.conn.rollback()
        wait_for(engine_waits_on(url, ours, 'UPDATE "engine".reconciliation_progress'),
                 engine, "the load to wait after its merge")
        # Queued behind the load's transaction, granted at its commit, before the re-read.
        locker = threading.Thread(target=exclusive.run,
                                  args=(f"LOCK TABLE {CALCULATIONS} IN ACCESS EXCLUSIVE MODE",))
        locker.start()
        wait_for(lambda: any(pid == exclusive.pid for pid, _ in waiting(url, [])),
                 engine, "the exclusive lock to queue")
        progress_lock.conn.rollback()
        locker.join(30)
        assert not locker.is_alive()
        wait_for(engine_waits_on(url, ours, "SELECT 'calculations'"),
                 engine, "the verification's reading of the month to wait")
        yield engine
        if meanwhile is not None:
            exclusive.run(meanwhile)
            exclusive.conn.commit()


@pytest.mark.slow
def test_killed_during_verification_the_loaded_month_stays_whole_and_a_rerun_verifies_it(
        database_url, tmp_path):
    want, _ = seed_december(database_url)
    with paused_in_verification(database_url, tmp_path) as engine:
        assert month_status(database_url) == ("in_progress", "loaded")
        kill(engine)
    wait_until_engine_backends_are_gone(database_url, [])

    assert bitcoin(database_url) == want  # the load committed whole
    assert_rerun_completes_it(database_url, tmp_path, want, inserted=0)


# --- locks held by another session --------------------------------------------------------------

def test_a_write_lock_held_elsewhere_times_the_merge_out_cleanly_and_writes_nothing(
        database_url, tmp_path):
    want, present = seed_december(database_url)
    with sessions(database_url, 1) as [other]:
        other.run(f"LOCK TABLE {CALCULATIONS} IN SHARE MODE")
        started = time.monotonic()
        result = run_engine(database_url, tmp_path, lock_timeout_ms=300)
        seconds = time.monotonic() - started

    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "lock timeout" in result.stderr and "Traceback" not in result.stderr
    assert seconds < 30
    assert bitcoin(database_url) == {key: want[key] for key in present}
    status, error = execute(database_url, "SELECT status, last_error FROM reconciliation_progress")[0]
    assert status == "failed" and "lock timeout" in error


@pytest.mark.slow
def test_an_exclusive_lock_held_elsewhere_times_the_extract_out_cleanly(database_url, tmp_path):
    want, present = seed_december(database_url)
    with sessions(database_url, 1) as [other]:
        other.run(f"LOCK TABLE {CALCULATIONS} IN ACCESS EXCLUSIVE MODE")
        result = run_engine(database_url, tmp_path, lock_timeout_ms=300, timeout=8)

    assert result.returncode == 2, "still waiting after 8 s (killed)"
    assert result.stderr.count("\n") == 1 and "lock" in result.stderr
    assert bitcoin(database_url) == {key: want[key] for key in present}


# --- another writer, concurrently ----------------------------------------------------------------

def live_app_rows(want: dict[Key, Decimal], present: list[Key]) -> list[Key]:
    """Six rows the live application writes while the engine runs: missing before the run."""
    return [key for key in sorted(want) if key not in present][:6]


@pytest.mark.slow
@pytest.mark.parametrize("unique_index", [True, False], ids=["unique index", "no index"])
def test_a_writer_inserting_the_same_month_meanwhile_makes_it_read_again_with_no_duplicate(
        database_url, tmp_path, unique_index):
    """The live app inserts six of the missing rows while the engine's write waits for it:
    the write rolls back (the index rejects a key, or the rows it did not write are not the
    snapshot's), the month is read again and the other 54 are inserted."""
    want, present = seed_december(database_url)
    if not unique_index:
        execute(database_url, "DROP INDEX historical_bitcoin_calculations_key")
    theirs = live_app_rows(want, present)
    with sessions(database_url, 1) as [app]:
        for day, period, farm, model in theirs:  # not committed: the extract cannot see them
            app.run(f"""INSERT INTO {CALCULATIONS} (settlement_date, settlement_period, farm_id,
                miner_model, bitcoin_mined, difficulty, calculated_at)
                VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric, '2000-01-01')""",
                    (day, period, farm, model, str(want[(day, period, farm, model)]),
                     DIFFICULTY[day]))
        engine = start_engine(database_url, tmp_path)
        wait_for(lambda: waiting(database_url, [app]), engine, "the merge to wait for the app")
        app.conn.commit()
        stdout, stderr = engine.communicate(timeout=60)

    assert engine.returncode == 0, stderr
    rows = json.loads(stdout)["rows"]
    assert (rows["missing_before"], rows["inserted"], rows["already_present"]) == (54, 54, 0)
    assert "reading it again" in stderr
    assert bitcoin(database_url) == want  # every key once
    assert execute(database_url, f"""SELECT count(*) FROM {CALCULATIONS}
                                     WHERE calculated_at = '2000-01-01'""") == [(6,)]
    progress = execute(database_url, """SELECT status, expected_rows, present_rows, inserted_rows
                                        FROM reconciliation_progress""")
    assert progress == [("completed", 72, 72, 54)]


@pytest.mark.slow
def test_a_writer_inserting_a_wrong_value_meanwhile_is_kept_and_reported_as_drift(
        database_url, tmp_path):
    """The live app writes one missing row with a wrong value during the run: the engine
    reads the month again, does not duplicate or overwrite it, and reports it as drift."""
    want, present = seed_december(database_url)
    key = live_app_rows(want, present)[0]
    with sessions(database_url, 1) as [app]:
        app.run(f"""INSERT INTO {CALCULATIONS} (settlement_date, settlement_period, farm_id,
            miner_model, bitcoin_mined, difficulty) VALUES ($1, $2, $3, $4, 1, $5::numeric)""",
                (*key, DIFFICULTY[key[0]]))
        engine = start_engine(database_url, tmp_path)
        wait_for(lambda: waiting(database_url, [app]), engine, "the merge to wait for the app")
        app.conn.commit()
        stdout, stderr = engine.communicate(timeout=60)

    assert engine.returncode == 0, stderr
    assert json.loads(stdout)["rows"]["drift"] == 1
    assert bitcoin(database_url) == {**want, key: Decimal(1)}


@pytest.mark.slow
def test_a_writer_changing_a_row_after_the_commit_fails_the_verification_and_names_it(
        database_url, tmp_path):
    """Between the write's commit and the verification another session edits a row the run
    inserted: the month's fingerprint is not the predicted one, the month is read back, and
    `rows_exact` fails naming the row with got and want (exit 1)."""
    want, present = seed_december(database_url)
    key = live_app_rows(want, present)[0]
    edit = (f"UPDATE {CALCULATIONS} SET bitcoin_mined = bitcoin_mined + 0.00000001 "
            f"WHERE settlement_date = '{key[0]}' AND settlement_period = {key[1]} "
            f"AND farm_id = '{key[2]}' AND miner_model = '{key[3]}'")
    with paused_in_verification(database_url, tmp_path, meanwhile=edit) as engine:
        pass
    stdout, stderr = engine.communicate(timeout=60)

    assert engine.returncode == 1, stderr
    checks = {c["name"]: c for c in json.loads(stdout)["verdict"]["checks"]}
    assert not checks["rows_exact"]["passed"]
    assert f"{key[0]} p{key[1]} {key[2]} {key[3]}" in checks["rows_exact"]["detail"]
    assert month_status(database_url) == ("failed", "unverified")
