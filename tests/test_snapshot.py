"""One consistent state per month: a writer that changes the month's source, or the rows the
diff was taken from, between the extract and the commit makes the write roll back and the
month be read again; the run row records which state it was computed from.

The engine is paused inside its write transaction, where it waits for the SHARE lock another
session holds on the calculations table (as in test_faults); meanwhile a writer commits its
change, then the lock is released. The December of test_faults: 72 expected rows, 12 present.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import execute
from tests.test_faults import (
    CALCULATIONS,
    DIFFICULTY,
    bitcoin,
    december_records,
    engine_waits_on,
    run_engine,
    seed_december,
    sessions,
    start_engine,
    wait_for,
)
from tests.test_property_engine import recompute

Records = list[tuple[date, int, str, str]]


def insert_record(url: str) -> Records:
    execute(url, """INSERT INTO curtailment_records (settlement_date, settlement_period, farm_id,
                    volume, payment, original_price, final_price)
                    VALUES ('2023-12-01', 7, 'D', -2, 0, 0, 0)""")
    return [*december_records(), (date(2023, 12, 1), 7, "D", "-2")]


def move_record(url: str) -> Records:
    """Farm C's record of 2023-12-01 period 1 moves to period 9 (same count, same volume)."""
    execute(url, """UPDATE curtailment_records SET settlement_period = 9
                    WHERE settlement_date = '2023-12-01' AND settlement_period = 1
                    AND farm_id = 'C'""")
    return [(d, 9 if (d, p, f) == (date(2023, 12, 1), 1, "C") else p, f, v)
            for d, p, f, v in december_records()]


def delete_record(url: str) -> Records:
    """One of farm A's two records of 2023-12-02 period 48 goes (A is left with -4 or -6)."""
    execute(url, """DELETE FROM curtailment_records WHERE id = (SELECT min(id)
                    FROM curtailment_records WHERE settlement_date = '2023-12-02'
                    AND settlement_period = 48 AND farm_id = 'A')""")
    kept = list(december_records())
    kept.remove((date(2023, 12, 2), 48, "A", "-6"))
    return kept


WRITERS: dict[str, Callable[[str], Records]] = {
    "a record inserted": insert_record, "a record moved to another period": move_record,
    "a record deleted": delete_record,
}


def run_with_writer_meanwhile(url: str, data_dir: Path, writer: Callable[[str], object], *,
                              after_merge: bool = False) -> tuple[int, dict, str]:
    """`engine month 2023-12 --json`, with `writer` committed while the merge waits (for the
    SHARE lock), or with `after_merge` once the merge ran and the transaction waits for the
    month's progress row (a writer of calculations would wait for the SHARE lock itself)."""
    with sessions(url, 2) as [lock, progress_lock]:
        ours = [lock, progress_lock]
        lock.run(f"LOCK TABLE {CALCULATIONS} IN SHARE MODE")  # readers pass, writers wait
        engine = start_engine(url, data_dir)
        wait_for(engine_waits_on(url, ours, f"INSERT INTO {CALCULATIONS}"), engine,
                 "the merge to wait")
        if after_merge:
            progress_lock.run("UPDATE reconciliation_progress SET updated_at = updated_at "
                              "WHERE month = '2023-12'")
            lock.conn.rollback()
            wait_for(engine_waits_on(url, ours, 'UPDATE "engine".reconciliation_progress'),
                     engine, "the write to wait after its merge")
        writer(url)
        lock.conn.rollback()
        progress_lock.conn.rollback()
        stdout, stderr = engine.communicate(timeout=120)
    return engine.returncode, json.loads(stdout) if stdout else {}, stderr


def last_run_snapshot(url: str) -> dict:
    return json.loads(execute(url, "SELECT snapshot::text FROM reconciliation_runs "
                                   "ORDER BY id DESC LIMIT 1")[0][0])


@pytest.mark.slow
@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_a_source_changed_between_extract_and_merge_is_read_again_and_ends_exactly_right(
        database_url: str, tmp_path: Path, writer: Callable[[str], Records]) -> None:
    want, present = seed_december(database_url)
    records: list[Records] = []

    code, result, stderr = run_with_writer_meanwhile(
        database_url, tmp_path, lambda url: records.append(writer(url)))

    assert code == 0, stderr
    assert result["status"] == "verified"
    assert "changed since it was read" in stderr and "reading it again" in stderr
    # Every row the changed source implies; the rows present before keep their values (a
    # moved record leaves them drifted or orphaned: reported, repaired only when asked).
    assert bitcoin(database_url) == recompute(records[0], DIFFICULTY) | {k: want[k] for k in present}
    snapshot = last_run_snapshot(database_url)
    assert snapshot["reads"] == 2
    assert snapshot["source"]["rows"] == len(records[0])
    assert execute(database_url, "SELECT status FROM reconciliation_progress") == [("completed",)]


@pytest.mark.slow
def test_a_calculation_edited_between_extract_and_merge_is_read_again_and_seen_as_drift(
        database_url: str, tmp_path: Path) -> None:
    want, present = seed_december(database_url)
    key = present[0]

    code, result, stderr = run_with_writer_meanwhile(database_url, tmp_path, lambda url: execute(
        url, f"""UPDATE {CALCULATIONS} SET bitcoin_mined = 1 WHERE settlement_date = $1
                 AND settlement_period = $2 AND farm_id = $3 AND miner_model = $4""", key),
        after_merge=True)

    assert code == 0, stderr
    assert result["rows"]["drift"] == 1  # the second read saw the edit; it is not overwritten
    assert bitcoin(database_url) == {**want, key: Decimal(1)}
    assert last_run_snapshot(database_url)["reads"] == 2


def test_an_undisturbed_month_records_one_read_of_its_state(
        database_url: str, tmp_path: Path) -> None:
    seed_december(database_url)

    result = run_engine(database_url, tmp_path)

    assert result.returncode == 0, result.stderr
    snapshot = last_run_snapshot(database_url)
    assert snapshot["reads"] == 1
    assert (snapshot["source"]["rows"], snapshot["source"]["days"]) == (len(december_records()), 2)
    assert (snapshot["calculations"]["rows"], snapshot["difficulty"]["rows"]) == (12, 2)
