"""The notebook API (`engine.explore`) against a real PostgreSQL, before and after a month is
reconciled: a tiny hand-made month whose answers are worked out below, and one demo month."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from engine import explore
from engine.demo import fill_database
from engine.errors import DatabaseUnavailable, InputError, MissingDifficulty
from engine.formula import KEY
from engine.month.reconcile import reconcile_month
from engine.month.session import open_session
from engine.months import Month
from engine.store.config import Settings
from tests.conftest import execute, insert_curtailment, insert_difficulty

DECEMBER = Month(2023, 12)


@pytest.fixture
def tiny(settings: Settings, database_url: str) -> explore.Workspace:
    """December 2023 with difficulty 1e14 on the 1st and 2nd and these records:

    - 2023-12-01 period 1: farm A -6 and -4 MWh (two acceptances: 10 MWh), farm B -10 MWh;
      they pool 20 MWh, so under S19J_PRO each gets round8(0.01717504 × 10 / 20) = 0.00858752;
    - 2023-12-01 period 2: farm A 0 MWh (does not qualify: no row is expected);
    - 2023-12-02 period 3: farm B -5 MWh.
    The table holds one row: B's S19J_PRO row of 12-01 period 1, with the right value. So 9
    rows are expected, 1 is present and 8 are missing: A 3 rows (10 MWh), B 5 rows (15 MWh).
    """
    insert_curtailment(database_url, [
        ("2023-12-01", 1, "A", "-6"), ("2023-12-01", 1, "A", "-4"), ("2023-12-01", 1, "B", "-10"),
        ("2023-12-01", 2, "A", "0"), ("2023-12-02", 3, "B", "-5"),
    ])
    insert_difficulty(database_url, {"2023-12-01": "100000000000000", "2023-12-02": "100000000000000"})
    execute(database_url, """
        INSERT INTO historical_bitcoin_calculations
            (settlement_date, settlement_period, farm_id, miner_model, bitcoin_mined, difficulty)
        VALUES ('2023-12-01', 1, 'B', 'S19J_PRO', 0.00858752, 100000000000000)""")
    return explore.Workspace.open(settings)


@pytest.fixture
def demo(settings: Settings, database_url: str) -> explore.Workspace:
    """One demo month (December 2023), not reconciled: most of its rows are missing."""
    fill_database(database_url, [DECEMBER], embedded=False)
    return explore.Workspace.open(settings)


def reconcile(ws: explore.Workspace, month: Month = DECEMBER, *, dry_run: bool = False) -> dict[str, int]:
    with open_session(ws.settings, ws.url) as session:
        return reconcile_month(session, month, dry_run=dry_run).rows


def test_read_gaps_finds_the_missing_rows_of_the_tiny_month(tiny: explore.Workspace) -> None:
    gaps = explore.read_gaps(tiny, "2023-12")
    assert gaps.source == "database"
    assert gaps.counts() == {"expected": 9, "present": 1, "missing": 8, "drift": 0, "orphans": 0,
                             "duplicates": 0}
    a_row = gaps.missing.filter((pl.col("farm_id") == "A") & (pl.col("miner_model") == "S19J_PRO"))
    assert a_row["bitcoin_mined"].to_list() == [Decimal("0.00858752")]


def test_coverage_per_model_and_per_month_of_the_tiny_month(tiny: explore.Workspace) -> None:
    gaps = explore.read_gaps(tiny, DECEMBER)
    by_model = explore.coverage(gaps, "miner_model")
    s19 = by_model.filter(pl.col("miner_model") == "S19J_PRO").row(0, named=True)
    assert (s19["expected"], s19["present"], s19["missing"], s19["percent"]) == (3, 1, 2, 33.33)
    assert by_model.filter(pl.col("miner_model") != "S19J_PRO")["percent"].to_list() == [0.0, 0.0]
    assert explore.coverage(gaps, "month").select("month", "expected", "present", "missing").rows() == [
        ("2023-12", 9, 1, 8)]


def test_heatmap_cells_cover_every_period_of_every_day(tiny: explore.Workspace) -> None:
    cells = explore.missing_by_period(explore.read_gaps(tiny, DECEMBER))
    assert cells.height == 31 * 48  # December 2023 has no clock change
    first = cells.filter((pl.col("settlement_date") == date(2023, 12, 1))
                         & (pl.col("settlement_period") == 1))
    assert first.select("missing_rows", "missing_farms", "missing_mwh").row(0) == (5, 2, 20.0)
    assert cells["missing_rows"].sum() == 8


def test_heatmap_of_october_has_the_fifty_period_clock_change_day(tiny: explore.Workspace) -> None:
    cells = explore.missing_by_period(explore.read_gaps(tiny, "2023-10"))
    periods = cells.group_by("settlement_date").len()
    assert periods.filter(pl.col("settlement_date") == date(2023, 10, 29))["len"].item() == 50
    assert cells.height == 30 * 48 + 50


def test_farms_and_days_with_the_most_missing_energy(tiny: explore.Workspace) -> None:
    gaps = explore.read_gaps(tiny, DECEMBER)
    farms = explore.top_farms(gaps)
    assert farms.select("farm_id", "missing_mwh", "missing_periods", "missing_rows", "days").rows() == [
        ("B", 15.0, 2, 5, 2), ("A", 10.0, 1, 3, 1)]
    days = explore.top_days(gaps, 1)
    assert days.select("settlement_date", "missing_mwh", "missing_rows", "farms").rows() == [
        (date(2023, 12, 1), 20.0, 5, 2)]


def test_explain_row_recomputes_a_missing_row_step_by_step(tiny: explore.Workspace) -> None:
    row = explore.explain_row(tiny, date(2023, 12, 1), 1, "A", "S19J_PRO")
    assert row.records["volume"].to_list() == [Decimal("-6"), Decimal("-4")]
    assert row.period_farms.height == 2
    assert (row.farm_mwh, row.period_mwh, row.miners) == (10.0, 20.0, 13114)
    assert row.network_th == pytest.approx(715827882.6666666)
    assert f"{row.period_btc:.8f}" == "0.01717504"
    assert row.farm_btc == row.kernel == row.vectorised == "0.00858752"
    assert row.agrees and row.status == "missing" and row.stored == ()
    assert row.steps()["step"].to_list()[:7] == [
        "farm MWh", "period MWh", "miners", "network TH/s", "period BTC", "farm share", "farm BTC"]


def test_explain_row_shows_what_the_table_stores(tiny: explore.Workspace) -> None:
    row = explore.explain_row(tiny, date(2023, 12, 1), 1, "B", "S19J_PRO")
    assert row.stored == ("0.00858752",)
    assert row.status == "present"
    assert row.to_dict()["status"] == "present"


def test_explain_row_refuses_a_key_without_qualifying_curtailment(tiny: explore.Workspace) -> None:
    with pytest.raises(InputError, match="no qualifying curtailment"):
        explore.explain_row(tiny, date(2023, 12, 1), 2, "A", "S19J_PRO")
    with pytest.raises(InputError, match="unknown miner model"):
        explore.explain_row(tiny, date(2023, 12, 1), 1, "A", "S21")


def test_a_day_without_difficulty_is_named(tiny: explore.Workspace, database_url: str) -> None:
    insert_curtailment(database_url, [("2023-12-03", 7, "A", "-3")])
    with pytest.raises(MissingDifficulty, match="2023-12-03"):
        explore.read_gaps(tiny, DECEMBER)
    with pytest.raises(MissingDifficulty, match="2023-12-03"):
        explore.explain_row(tiny, date(2023, 12, 3), 7, "A", "S9")


def test_before_any_run_the_database_shows_the_backlog_and_nothing_is_recorded(
        demo: explore.Workspace) -> None:
    gaps = explore.load_gaps(demo)
    assert gaps.source == "database" and gaps.months == (DECEMBER,)
    assert gaps.missing.height > gaps.expected.height / 2  # the demo's December is mostly missing
    assert gaps.orphans.height > 0 and gaps.drift.height > 0
    recorded = explore.recorded_gaps(demo)
    assert recorded.months == () and recorded.counts()["expected"] == 0
    assert explore.top_farms(recorded).is_empty() and explore.missing_by_period(recorded).is_empty()
    assert explore.progress(demo).is_empty() and explore.runs(demo).is_empty()
    assert explore.time_per_month(explore.runs(demo)).is_empty()


def test_the_database_picture_matches_what_the_pipeline_finds(demo: explore.Workspace) -> None:
    gaps = explore.read_gaps(demo, DECEMBER)
    rows = reconcile(demo, dry_run=True)
    assert gaps.counts()["missing"] == rows["missing_before"]
    assert (gaps.counts()["drift"], gaps.counts()["orphans"]) == (rows["drift"], rows["orphans"])
    written = explore.read_diff(demo, "missing", DECEMBER)
    assert gaps.missing.select(KEY, "bitcoin_mined").equals(written.select(KEY, "bitcoin_mined"))
    assert explore.recompute_expected(demo, DECEMBER).equals(explore.read_expected(demo).drop("month"))


def test_after_reconciliation_nothing_is_missing_and_the_recorded_backlog_remains(
        demo: explore.Workspace) -> None:
    rows = reconcile(demo)
    now = explore.read_gaps(demo)
    assert now.missing.is_empty() and now.counts()["present"] == rows["expected"]
    assert explore.read_existing(demo, DECEMBER).height == now.existing.height
    recorded = explore.recorded_gaps(demo)
    assert recorded.months == (DECEMBER,)
    assert recorded.missing.height == rows["missing_before"] == rows["inserted"]
    assert recorded.drift.height == rows["drift"] and recorded.orphans.height == rows["orphans"]
    assert explore.load_gaps(demo).source == "recorded"


def test_explain_row_agrees_with_the_formula_on_demo_rows(demo: explore.Workspace) -> None:
    missing = explore.read_gaps(demo, DECEMBER).missing
    for row in missing.gather_every(max(1, missing.height // 10)).iter_rows(named=True):
        explained = explore.explain_row(demo, *(row[k] for k in KEY))
        assert explained.agrees, explained.to_dict()
        assert explained.farm_btc == f"{row['bitcoin_mined']:.8f}"
        assert explained.status == "missing"


def test_progress_and_runs_after_a_run(demo: explore.Workspace) -> None:
    rows = reconcile(demo)
    progress = explore.progress(demo, "2023-01..2023-12")
    assert progress.select("month", "status", "expected_rows", "percent_complete").rows() == [
        ("2023-12", "completed", rows["expected"], 100.0)]
    assert explore.progress(demo, "2024-01").is_empty()
    runs = explore.runs(demo)
    assert runs.select("month", "status").rows() == [("2023-12", "verified")]
    steps = explore.run_steps(runs)
    assert {"extract", "recompute", "diff", "load", "verify"} <= set(steps["step"])
    load = steps.filter(pl.col("step") == "load").row(0, named=True)
    assert load["rows"] == rows["inserted"] and load["rows_per_second"] > 0
    month = explore.time_per_month(runs).row(0, named=True)
    assert month["month"] == "2023-12" and month["seconds"] == pytest.approx(steps["seconds"].sum())
    assert explore.step_share(runs)["percent"].sum() == pytest.approx(100.0, abs=0.5)


def test_duckdb_has_views_over_the_parquet_and_the_gaps(demo: explore.Workspace) -> None:
    gaps = explore.load_gaps(demo)
    with explore.open_duckdb(demo, gaps) as con:  # before any run: only the gaps
        assert {r[0] for r in con.sql("SHOW TABLES").fetchall()} == {
            "gaps_curtailment", "gaps_expected", "gaps_existing", *(f"gaps_{k}" for k in explore.KINDS)}
        assert con.sql("SELECT count(*) FROM gaps_missing").fetchall() == [(gaps.missing.height,)]
    rows = reconcile(demo)
    with explore.open_duckdb(demo) as con:
        # `after` (the month read back) exists only where verification found it differed.
        assert set(explore.DATASETS) - {"after"} == {r[0] for r in con.sql("SHOW TABLES").fetchall()}
        assert con.sql("SELECT month, count(*) FROM missing GROUP BY month").fetchall() == [
            ("2023-12", rows["missing_before"])]


def test_diff_files_whose_columns_differ_are_read_together(tmp_path: Path) -> None:
    """November's drift file has no `cause` (an older run), December's has one."""
    ws = explore.Workspace(Settings(data_dir=tmp_path), "postgresql://unused@127.0.0.1/none", ())
    row = {"settlement_date": [date(2023, 11, 5)], "settlement_period": [3], "farm_id": ["A"],
           "miner_model": ["S9"], "delta": [-0.5]}
    for month, extra in (("2023-11", {}), ("2023-12", {"cause": ["stale_difficulty"]})):
        folder = tmp_path / "diffs" / "drift" / f"month={month}"
        folder.mkdir(parents=True)
        pl.DataFrame({**row, **extra}).write_parquet(folder / "part-0.parquet")
    drift = explore.read_diff(ws, "drift")
    assert drift.select("month", "cause").rows() == [("2023-11", None), ("2023-12", "stale_difficulty")]
    assert explore.read_diff(ws, "drift", "2023-12").height == 1
    summary = explore.diff_summary(drift, by=["miner_model"])
    assert summary.select("cause", "rows", "delta").sort("cause", nulls_last=True).rows() == [
        ("stale_difficulty", 1, -0.5), (None, 1, -0.5)]
    assert explore.read_diff(ws, "orphans").is_empty()
    with pytest.raises(ValueError, match="unknown diff class"):
        explore.read_diff(ws, "gaps")


def test_months_are_read_from_text_ranges_and_lists() -> None:
    assert explore.to_months("2023-11..2024-01") == [Month(2023, 11), DECEMBER, Month(2024, 1)]
    assert explore.to_months([DECEMBER, "2023-11", "2023-12"]) == [Month(2023, 11), DECEMBER]
    assert explore.to_months(None) is None
    with pytest.raises(InputError):
        explore.to_months("December")


def test_coverage_refuses_an_unknown_grouping(tiny: explore.Workspace) -> None:
    with pytest.raises(ValueError, match="cannot group by lead_party"):
        explore.coverage(explore.read_gaps(tiny, DECEMBER), "lead_party")
    with pytest.raises(ValueError, match="source must be"):
        explore.load_gaps(tiny, DECEMBER, "yesterday")  # type: ignore[arg-type]


def test_an_unreachable_database_fails_at_once(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:1/engine", data_dir=tmp_path)
    with pytest.raises(DatabaseUnavailable):
        explore.Workspace.open(settings)


def test_a_workspace_shows_its_database_url_masked(tmp_path: Path) -> None:
    ws = explore.Workspace(Settings(data_dir=tmp_path), "postgresql://engine:s3cret@db.example:5432/prod", ())
    assert "s3cret" not in repr(ws) and "engine:***@db.example:5432" in repr(ws)
