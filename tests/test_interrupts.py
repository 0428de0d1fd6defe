"""Signals sent to a real `engine` process: every month is left whole and undoable or
untouched, the run and month rows say `interrupted`, the backfill row keeps its real counts,
and the process exits 130 (SIGINT) or 143 (SIGTERM). Undo images belong to one database.

The engine is paused at a known point as in test_faults: another session holds a lock the
step needs, and `pg_stat_activity` shows where the engine waits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from engine.demo import fill_database
from engine.months import parse_range
from engine.store import db
from tests.conftest import execute, with_database
from tests.test_faults import (
    CALCULATIONS,
    ENGINE,
    bitcoin,
    engine_waits_on,
    paused_in_verification,
    run_engine,
    seed_december,
    sessions,
    start_engine,
    wait_for,
)
from tests.test_undo_plan import export

pytestmark = pytest.mark.slow

MONTH_AND_RUN = """SELECT p.status, r.status, r.backfill_id FROM reconciliation_progress p
                   JOIN reconciliation_runs r ON r.id = p.last_run_id WHERE p.month = '2023-12'"""


def test_ctrl_c_while_the_merge_waits_rolls_the_month_back_and_says_interrupted(
        database_url: str, tmp_path: Path) -> None:
    want, present = seed_december(database_url)
    with sessions(database_url, 1) as [writer_lock]:
        writer_lock.run(f"LOCK TABLE {CALCULATIONS} IN SHARE MODE")
        engine = start_engine(database_url, tmp_path)
        wait_for(engine_waits_on(database_url, [writer_lock], f"INSERT INTO {CALCULATIONS}"),
                 engine, "the merge to wait")
        engine.send_signal(signal.SIGINT)
        stdout, stderr = engine.communicate(timeout=60)

    assert engine.returncode == 130, stderr
    assert stdout == ""
    assert stderr.startswith("interrupted") and "Traceback" not in stderr
    assert bitcoin(database_url) == {key: want[key] for key in present}
    assert execute(database_url, MONTH_AND_RUN) == [("interrupted", "interrupted", None)]
    rerun = run_engine(database_url, tmp_path)
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["rows"]["inserted"] == 60
    assert bitcoin(database_url) == want


def test_sigterm_while_the_merge_waits_finishes_the_month_then_exits_143(
        database_url: str, tmp_path: Path) -> None:
    want, _ = seed_december(database_url)
    with sessions(database_url, 1) as [writer_lock]:
        writer_lock.run(f"LOCK TABLE {CALCULATIONS} IN SHARE MODE")
        engine = start_engine(database_url, tmp_path)
        wait_for(engine_waits_on(database_url, [writer_lock], f"INSERT INTO {CALCULATIONS}"),
                 engine, "the merge to wait")
        engine.send_signal(signal.SIGTERM)
        writer_lock.conn.rollback()
        stdout, stderr = engine.communicate(timeout=60)

    assert engine.returncode == 143, stderr
    assert json.loads(stdout)["status"] == "verified"
    assert bitcoin(database_url) == want
    assert execute(database_url, MONTH_AND_RUN) == [("completed", "verified", None)]


def test_ctrl_c_during_verification_keeps_the_committed_month_verified_and_undoable(
        database_url: str, tmp_path: Path) -> None:
    want, present = seed_december(database_url)
    before = export(database_url)
    with paused_in_verification(database_url, tmp_path) as engine:
        engine.send_signal(signal.SIGINT)
    stdout, stderr = engine.communicate(timeout=60)  # the lock is gone with the block

    assert engine.returncode == 130, stderr
    assert json.loads(stdout)["status"] == "verified"  # the month it was writing was finished
    assert bitcoin(database_url) == want
    run_id = execute(database_url, "SELECT max(id) FROM reconciliation_runs")[0][0]
    undone = run_engine(database_url, tmp_path, "undo", str(run_id), "--json")
    assert undone.returncode == 0, undone.stderr
    assert export(database_url) == before and len(before) == len(present)


def test_ctrl_c_during_a_backfill_finishes_the_months_in_progress_and_undo_takes_them_back(
        database_url: str, tmp_path: Path) -> None:
    fill_database(database_url, parse_range("2023-09..2023-12"), embedded=False)
    before = export(database_url)
    engine = start_engine(database_url, tmp_path, "run", "--jobs", "2", "--json")
    assert engine.stderr is not None
    first = engine.stderr.readline()
    assert first.startswith("plan: 4 month(s)")
    wait_for(lambda: execute(database_url, "SELECT count(*) FROM reconciliation_runs")[0][0] >= 2,
             engine, "two months to start")
    engine.send_signal(signal.SIGINT)
    stdout, stderr = engine.communicate(timeout=120)

    assert engine.returncode == 130, stderr
    result = json.loads(stdout)
    assert result["interrupted"] is True
    runs = execute(database_url, "SELECT month, status, backfill_id FROM reconciliation_runs")
    assert {status for _, status, _ in runs} <= {"verified", "interrupted"}
    assert {backfill for _, _, backfill in runs} == {result["backfill_id"]}
    months = execute(database_url, "SELECT month, status FROM reconciliation_progress")
    assert {status for _, status in months} <= {"completed", "interrupted"}
    verified = sum(1 for _, status, _ in runs if status == "verified")
    backfill = execute(database_url, """SELECT status, months_verified, rows_inserted
                                        FROM reconciliation_backfills""")
    assert backfill == [("interrupted", verified, result["counts"]["inserted"])]
    assert verified < 4  # it stopped before the last months

    undone = run_engine(database_url, tmp_path, "undo", "--backfill", str(result["backfill_id"]),
                        "--json")
    if verified:
        assert undone.returncode == 0, undone.stderr
    assert export(database_url) == before


def test_two_databases_sharing_a_data_folder_keep_their_own_undo_images(
        database_url: str, server_url: str, tmp_path: Path) -> None:
    """Run 1 of each database changes different rows; each undo takes back its own."""
    other = with_database(server_url, database_url.rsplit("/", 1)[1] + "_b")
    with db.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {other.rsplit('/', 1)[1]}")
    try:
        from engine.store.schema import init_schema

        init_schema(other, own_database=True)
        for url in (database_url, other):
            seed_december(url)
        befores = [export(url) for url in (database_url, other)]
        for url in (database_url, other):
            assert run_engine(url, tmp_path).returncode == 0

        for url, before in zip((database_url, other), befores, strict=True):
            undone = run_engine(url, tmp_path, "undo", "1", "--json")
            assert undone.returncode == 0, undone.stderr
            assert export(url) == before
    finally:
        with db.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {other.rsplit('/', 1)[1]} WITH (FORCE)")


def test_a_second_ctrl_c_during_a_backfill_stops_at_once_and_says_what_was_committed(
        database_url: str, tmp_path: Path) -> None:
    """The merge waits on another session's lock; two SIGINTs: the process stops without
    waiting, the waiting run and its month read interrupted, the backfill row counts nothing
    committed, and the table is as it was."""
    want, present = seed_december(database_url)
    with sessions(database_url, 1) as [writer_lock]:
        writer_lock.run(f"LOCK TABLE {CALCULATIONS} IN SHARE MODE")
        engine = start_engine(database_url, tmp_path, "run", "--json")
        wait_for(engine_waits_on(database_url, [writer_lock], f"INSERT INTO {CALCULATIONS}"),
                 engine, "the merge to wait")
        engine.send_signal(signal.SIGINT)
        time.sleep(0.5)
        engine.send_signal(signal.SIGINT)
        _, stderr = engine.communicate(timeout=60)
        writer_lock.conn.rollback()

    assert engine.returncode == 130, stderr
    assert bitcoin(database_url) == {key: want[key] for key in present}
    assert execute(database_url, MONTH_AND_RUN)[0][:2] == ("interrupted", "interrupted")
    backfill = execute(database_url, """SELECT status, months_verified, rows_inserted
                                        FROM reconciliation_backfills""")
    assert backfill == [("interrupted", 0, 0)]


@pytest.mark.parametrize("command", [("month", "2023-12"), ("run", "--jobs", "2")],
                         ids=["month", "run"])
def test_ctrl_c_while_connecting_to_a_silent_port_stops_at_once(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    """A port that accepts connections and never answers: without the signal the engine would
    wait out its 30 s connect timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"postgresql://engine@127.0.0.1:{silent.getsockname()[1]}/engine"
        engine = subprocess.Popen(
            [*ENGINE, *command], env={**os.environ, "ENGINE_DATABASE_URL": url,
                                      "ENGINE_DATA_DIR": str(tmp_path),
                                      "ENGINE_CONNECT_TIMEOUT_S": "30"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        started = time.monotonic()
        engine.send_signal(signal.SIGINT)
        _, stderr = engine.communicate(timeout=25)
        seconds = time.monotonic() - started
    finally:
        silent.close()

    assert engine.returncode == 130, stderr
    assert seconds < 5 and stderr.strip().endswith("interrupted") and "Traceback" not in stderr
