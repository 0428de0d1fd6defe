"""The month pipeline against a real PostgreSQL: what it writes, what it refuses, what it proves."""

from __future__ import annotations

from datetime import date

import pytest

from engine.errors import MissingDifficulty, MonthBusy, SourceDataError
from engine.month import locks
from engine.month.reconcile import MonthResult, reconcile_month
from engine.month.session import open_session
from engine.months import Month
from engine.store import db
from engine.store.config import Settings
from tests.conftest import calculations, execute, insert_curtailment, insert_difficulty

DECEMBER = Month(2023, 12)


def seed_december(url: str) -> None:
    """Three qualifying keys, so 9 expected rows:
    - 2023-12-01 period 1: farm A has two records (-6 and -4 MWh: 10 MWh), farm B -10 MWh.
      The period pools 20 MWh; at difficulty 1e14 each farm gets 0.00858752 BTC (S19J_PRO).
    - 2023-12-01 period 2: farm A with volume 0 does not qualify.
    - 2023-12-02 period 48: farm C, -3.5 MWh.
    """
    insert_curtailment(url, [
        ("2023-12-01", 1, "A", "-6"), ("2023-12-01", 1, "A", "-4"), ("2023-12-01", 1, "B", "-10"),
        ("2023-12-01", 2, "A", "0"), ("2023-12-02", 48, "C", "-3.5"),
    ])
    insert_difficulty(url, {"2023-12-01": "100000000000000", "2023-12-02": "67305906902031.39"})


def reconcile(settings: Settings, month: Month = DECEMBER, **options) -> MonthResult:
    with open_session(settings) as session:
        return reconcile_month(session, month, **options)


def progress_row(url: str, month: str = "2023-12") -> tuple:
    rows = execute(url, """SELECT status, expected_rows, present_rows, inserted_rows, attempts,
                                  last_error FROM reconciliation_progress WHERE month = $1""", (month,))
    return rows[0] if rows else ()


def test_month_inserts_exactly_the_missing_rows_and_verifies(settings, database_url):
    seed_december(database_url)
    result = reconcile(settings)

    assert result.status == "verified" and result.exit_code == 0
    assert result.rows["expected"] == 9 and result.rows["inserted"] == 9
    rows = calculations(database_url)
    assert len(rows) == 9
    assert {r[3] for r in rows} == {"S19J_PRO", "S9", "M20S"}
    s19 = {(r[0], r[1], r[2]): r[4] for r in rows if r[3] == "S19J_PRO"}
    assert s19[(date(2023, 12, 1), 1, "A")] == "0.00858752"
    assert s19[(date(2023, 12, 1), 1, "B")] == "0.00858752"
    assert all(r[5] == "67305906902031.39" for r in rows if r[0] == date(2023, 12, 2))
    assert progress_row(database_url)[:4] == ("completed", 9, 9, 9)
    assert execute(database_url, "SELECT count(*) FROM historical_bitcoin_calculations "
                                 "WHERE calculated_at IS NULL") == [(0,)]


def test_second_run_inserts_nothing(settings, database_url):
    seed_december(database_url)
    reconcile(settings)
    before = calculations(database_url)

    again = reconcile(settings)

    assert again.status == "verified"
    assert again.rows["inserted"] == 0 and again.rows["present_before"] == 9
    assert calculations(database_url) == before
    assert progress_row(database_url)[4] == 2  # attempts


def test_only_missing_rows_are_added_to_a_partial_month(settings, database_url):
    seed_december(database_url)
    reconcile(settings)
    execute(database_url, "DELETE FROM historical_bitcoin_calculations WHERE farm_id = 'B'")

    result = reconcile(settings)

    assert result.rows["present_before"] == 6 and result.rows["inserted"] == 3
    assert len(calculations(database_url)) == 9


def test_month_without_difficulty_writes_nothing(settings, database_url):
    insert_curtailment(database_url, [("2023-12-05", 3, "A", "-1"), ("2023-12-07", 9, "B", "-2")])
    insert_difficulty(database_url, {"2023-12-05": "70000000000000"})

    with pytest.raises(MissingDifficulty) as raised:
        reconcile(settings)

    assert raised.value.dates == [date(2023, 12, 7)]
    assert "2023-12-07" in str(raised.value)
    assert calculations(database_url) == []
    status, *_, error = progress_row(database_url)
    assert status == "failed" and "2023-12-07" in error
    assert execute(database_url, "SELECT status FROM reconciliation_runs") == [("failed",)]


def test_clock_change_days_have_46_and_50_periods(settings, database_url):
    insert_curtailment(database_url, [
        ("2023-10-29", 49, "A", "-5"), ("2023-10-29", 50, "A", "-5"), ("2023-03-26", 46, "B", "-1"),
    ])
    insert_difficulty(database_url, {"2023-10-29": "61030681983175", "2023-03-26": "46843400286277"})

    october = reconcile(settings, Month(2023, 10))
    march = reconcile(settings, Month(2023, 3))

    assert october.status == march.status == "verified"
    assert {(r[0], r[1]) for r in calculations(database_url)} == {
        (date(2023, 10, 29), 49), (date(2023, 10, 29), 50), (date(2023, 3, 26), 46)}


def test_a_period_the_day_does_not_have_fails_the_month(settings, database_url):
    insert_curtailment(database_url, [("2023-03-26", 47, "A", "-1")])
    insert_difficulty(database_url, {"2023-03-26": "46843400286277"})

    with pytest.raises(SourceDataError, match="period 47"):
        reconcile(settings, Month(2023, 3))

    assert calculations(database_url) == []
    assert progress_row(database_url, "2023-03")[0] == "failed"


def test_dry_run_writes_nothing(settings, database_url):
    seed_december(database_url)

    result = reconcile(settings, dry_run=True)

    assert result.status == "dry_run" and result.exit_code == 0
    assert result.rows["missing_before"] == 9 and result.rows["inserted"] == 0
    assert calculations(database_url) == []
    assert execute(database_url, "SELECT count(*) FROM reconciliation_progress") == [(0,)]
    assert execute(database_url, "SELECT count(*) FROM reconciliation_runs") == [(0,)]


def test_month_without_curtailment_is_a_clean_no_op(settings, database_url):
    result = reconcile(settings, Month(2021, 5))

    assert result.status == "nothing_to_do" and result.exit_code == 0
    assert execute(database_url, "SELECT count(*) FROM reconciliation_runs") == [(0,)]


def test_drift_and_orphans_are_reported_and_left_alone(settings, database_url):
    seed_december(database_url)
    reconcile(settings)
    execute(database_url, """UPDATE historical_bitcoin_calculations SET bitcoin_mined = 1,
                             difficulty = 108105433845147 WHERE farm_id = 'C' AND miner_model = 'S9'""")
    execute(database_url, """INSERT INTO historical_bitcoin_calculations (settlement_date,
                             settlement_period, farm_id, miner_model, bitcoin_mined, difficulty)
                             VALUES ('2023-12-01', 2, 'A', 'S9', 0.5, 1)""")
    before = calculations(database_url)

    result = reconcile(settings)

    assert result.status == "verified"
    assert (result.rows["drift"], result.rows["orphans"], result.rows["inserted"]) == (1, 1, 0)
    assert result.verdict is not None and result.verdict.outstanding == {"drift": 1, "orphans": 1}
    assert calculations(database_url) == before


def test_a_row_another_writer_inserted_meanwhile_is_not_duplicated(settings, database_url):
    """The app inserts one of the missing keys (with its own value) after the diff: the write
    rolls back, the month is read again, and the app's row is kept and reported as drift."""
    seed_december(database_url)
    written = []

    def live_app_writes(month: Month, step: str) -> None:
        if step == "load" and not written:  # after the diff, before the merge
            written.append(step)
            execute(database_url, """INSERT INTO historical_bitcoin_calculations (settlement_date,
                settlement_period, farm_id, miner_model, bitcoin_mined, difficulty)
                VALUES ('2023-12-02', 48, 'C', 'S9', 0.00012345, 67305906902031.39)""")

    result = reconcile(settings, on_step=live_app_writes)

    assert result.status == "verified"
    assert (result.rows["missing_before"], result.rows["inserted"], result.rows["drift"]) == (8, 8, 1)
    assert len(calculations(database_url)) == 9


def test_a_row_that_appears_during_verification_fails_it(settings, database_url):
    seed_december(database_url)

    def stray_writer(month: Month, step: str) -> None:
        if step == "verify":
            execute(database_url, """INSERT INTO historical_bitcoin_calculations (settlement_date,
                settlement_period, farm_id, miner_model, bitcoin_mined, difficulty)
                VALUES ('2023-12-03', 7, 'Z', 'S9', 1, 1)""")

    result = reconcile(settings, on_step=stray_writer)

    assert result.status == "unverified" and result.exit_code == 1
    assert result.verdict is not None
    assert [c.name for c in result.verdict.failed] == ["unexpected_keys", "settlement_periods",
                                                       "rows_exact"]
    assert "2023-12-03 p7 Z S9 got 1 BTC at difficulty 1 (not written by this run)" in (
        result.verdict.failed[-1].detail)
    status, *_, error = progress_row(database_url)
    assert status == "failed" and error.startswith("verification failed: unexpected_keys")


def test_without_the_unique_index_the_engine_still_adds_no_duplicate(settings, database_url):
    seed_december(database_url)
    execute(database_url, "DROP INDEX historical_bitcoin_calculations_key")
    duplicate = """INSERT INTO historical_bitcoin_calculations (settlement_date, settlement_period,
        farm_id, miner_model, bitcoin_mined, difficulty)
        VALUES ('2023-12-01', 1, 'A', 'S9', 0.00267278, 100000000000000)"""
    execute(database_url, duplicate)
    execute(database_url, duplicate)

    result = reconcile(settings)

    assert result.status == "verified"
    assert result.rows["duplicates"] == 2 and result.rows["inserted"] == 8
    assert len(calculations(database_url)) == 10  # 9 keys, one of them twice as before


def test_a_month_another_process_is_reconciling_is_left_alone(settings, database_url):
    seed_december(database_url)
    with db.connect(database_url) as other, other.cursor() as cursor:
        assert locks.try_lock_month(cursor, DECEMBER)
        other.commit()

        with pytest.raises(MonthBusy, match="2023-12 is being reconciled by another process"):
            reconcile(settings)

    assert calculations(database_url) == []
    assert reconcile(settings).status == "verified"  # the lock went with the other session
