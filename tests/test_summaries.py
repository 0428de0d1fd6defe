"""The summary tables: refreshed with the month, in its transaction, and verified."""

from __future__ import annotations

from engine.month import summaries
from engine.months import Month
from engine.store import db
from tests.conftest import execute
from tests.test_pipeline import DECEMBER, seed_december
from tests.test_repair import reconcile, seed_damaged_december


def check(url: str, month: Month = DECEMBER) -> summaries.SummaryCheck:
    with db.connect(url) as conn, conn.cursor() as cursor:
        return summaries.verify(cursor, month)


def rows(url: str, table: str, key: str) -> list[tuple]:
    return execute(url, f"SELECT {key}::text, miner_model, bitcoin_mined::text FROM {table} "
                        "ORDER BY 1, 2")


def test_a_load_fills_the_daily_monthly_and_yearly_summaries_with_their_sums(settings, database_url):
    """December: S9 gets 0.00267278 twice on the 1st (A and B) and 0.00138989 on the 2nd, so
    daily S9 0.00534556 and 0.00138989, monthly and yearly S9 0.00673545."""
    seed_december(database_url)

    result = reconcile(settings)

    assert result.summaries == {"days": 2, "changes": {
        "daily": {"deleted": 0, "updated": 0, "inserted": 6},
        "monthly": {"deleted": 0, "updated": 0, "inserted": 3},
        "yearly": {"deleted": 0, "updated": 0, "inserted": 3}}}
    daily = rows(database_url, summaries.DAILY, "summary_date")
    assert ("2023-12-01", "S9", "0.00534556") in daily and ("2023-12-02", "S9", "0.00138989") in daily
    assert ("2023-12", "S9", "0.00673545") in rows(database_url, summaries.MONTHLY, "year_month")
    assert ("2023", "S9", "0.00673545") in rows(database_url, summaries.YEARLY, "year")
    assert check(database_url).verified


def test_verify_names_each_level_that_differs_from_its_sum(settings, database_url):
    seed_december(database_url)
    reconcile(settings)
    execute(database_url, f"UPDATE {summaries.DAILY} SET bitcoin_mined = 1 WHERE miner_model = 'S9' "
                          "AND summary_date = '2023-12-01'")
    execute(database_url, f"""INSERT INTO {summaries.YEARLY} (year, miner_model, bitcoin_mined)
                              VALUES ('2023', 'M20S', 0)""")

    found = check(database_url)

    # The wrong daily S9 also makes the month's S9 differ from Σ daily; the yearly M20S twice.
    assert (found.daily, found.monthly, found.yearly) == (1, 1, 1)
    assert not found.verified


def test_a_fix_rewrites_wrong_and_duplicated_summary_rows_and_deletes_stale_ones(settings, database_url):
    """Summaries left wrong: daily S9 of the 1st wrong and present twice, a daily row for the
    3rd (which has no calculations), the monthly M20S missing. `--fix drift` refreshes the
    whole month."""
    seed_damaged_december(database_url, settings)
    execute(database_url, f"UPDATE {summaries.DAILY} SET bitcoin_mined = 7 WHERE miner_model = 'S9' "
                          "AND summary_date = '2023-12-01'")
    execute(database_url, f"""INSERT INTO {summaries.DAILY} (summary_date, miner_model, bitcoin_mined)
                              VALUES ('2023-12-01', 'S9', 7), ('2023-12-03', 'S9', 1)""")
    execute(database_url, f"DELETE FROM {summaries.MONTHLY} WHERE miner_model = 'M20S'")
    assert not check(database_url).verified

    result = reconcile(settings, fix=["drift"])

    assert result.status == "verified"
    assert result.summaries is not None
    assert result.summaries["changes"]["daily"]["deleted"] == 2  # the second S9 and the 3rd
    assert result.summaries["changes"]["monthly"]["inserted"] == 1
    assert check(database_url).verified
    assert execute(database_url, f"SELECT count(*) FROM {summaries.DAILY} "
                                 "WHERE summary_date = '2023-12-03'") == [(0,)]


def test_a_rerun_that_changes_nothing_leaves_the_summaries_alone(settings, database_url):
    seed_december(database_url)
    reconcile(settings)
    stamp = execute(database_url, f"SELECT max(updated_at) FROM {summaries.DAILY}")

    again = reconcile(settings)

    assert again.summaries is None
    assert execute(database_url, f"SELECT max(updated_at) FROM {summaries.DAILY}") == stamp
