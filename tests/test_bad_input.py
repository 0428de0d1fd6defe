"""Bad data and hostile input: each gets a clear message or a documented outcome, and nothing
in the database is lost. Every test checks the tables, not only the exit code."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import SourceDataError
from engine.month.reconcile import reconcile_month
from engine.month.session import open_session
from engine.months import Month
from engine.store.db import TransientDatabaseError
from tests.conftest import PASSWORD_ROLE, execute, insert_curtailment, insert_difficulty
from tests.test_faults import ENGINE, bitcoin
from tests.test_property_engine import insert_calculations, recompute

DECEMBER_1 = date(2023, 12, 1)
HARD = "100000000000000"
runner = CliRunner()


def engine(*args: str, url: str, data_dir: Path, **env: str):
    return runner.invoke(app, list(args), env={"ENGINE_DATABASE_URL": url,
                                              "ENGINE_DATA_DIR": str(data_dir), **env})


def seed_good_day(url: str) -> dict:
    """2023-12-01 period 1: farm A -10 MWh, already reconciled (3 rows present, right values);
    difficulty 1e14 on 2023-12-01 and 2023-12-02. Returns the present table {key: bitcoin}."""
    records = [(DECEMBER_1, 1, "A", "-10")]
    insert_curtailment(url, [("2023-12-01", 1, "A", "-10")])
    insert_difficulty(url, {"2023-12-01": HARD, "2023-12-02": HARD})
    rows = recompute(records, {DECEMBER_1: HARD})
    insert_calculations(url, [(key, value, HARD) for key, value in rows.items()])
    return rows


def add_record(url: str, day: str, period: int, farm: str, volume: str) -> None:
    execute(url, """INSERT INTO curtailment_records (settlement_date, settlement_period, farm_id,
                    volume, payment, original_price, final_price)
                    VALUES ($1::date, $2, $3, $4::numeric, 0, 0, 0)""", (day, period, farm, volume))


def progress(url: str, month: str = "2023-12") -> tuple:
    rows = execute(url, "SELECT status, last_error FROM reconciliation_progress WHERE month = $1",
                   (month,))
    return rows[0] if rows else ()


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    return result.stderr


# --- bad data ------------------------------------------------------------------------------------

def test_a_null_volume_fails_the_month_naming_the_record_and_writes_nothing(database_url, tmp_path):
    """Production's column is NOT NULL; a copy without the constraint may hold a NULL."""
    present = seed_good_day(database_url)
    execute(database_url, "ALTER TABLE curtailment_records ALTER COLUMN volume DROP NOT NULL")
    execute(database_url, """INSERT INTO curtailment_records (settlement_date, settlement_period,
        farm_id, volume, payment, original_price, final_price)
        VALUES ('2023-12-02', 5, 'B', NULL, 0, 0, 0)""")

    message = one_line_error(engine("month", "2023-12", url=database_url, data_dir=tmp_path))

    assert "1 curtailment record(s) have no volume" in message and "2023-12-02 period 5" in message
    assert bitcoin(database_url) == present
    assert progress(database_url)[0] == "failed"


@pytest.mark.parametrize("volume", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_volume_fails_the_month_in_one_line_and_writes_nothing(
        volume, database_url, tmp_path):
    present = seed_good_day(database_url)
    add_record(database_url, "2023-12-02", 5, "B", volume)

    one_line_error(engine("month", "2023-12", url=database_url, data_dir=tmp_path))

    assert bitcoin(database_url) == present
    assert execute(database_url, "SELECT count(*) FROM curtailment_records") == [(2,)]


def test_a_non_finite_volume_is_a_data_error_that_names_the_record(settings, database_url):
    seed_good_day(database_url)
    add_record(database_url, "2023-12-02", 5, "B", "NaN")

    with open_session(settings) as session, pytest.raises(SourceDataError) as raised:
        reconcile_month(session, Month(2023, 12))

    assert not isinstance(raised.value, TransientDatabaseError)
    assert "volume" in str(raised.value) and "2023-12-02" in str(raised.value)
    assert progress(database_url)[0] == "failed"


ODD_FARMS = ("O'Brien", 'Quote "Wind" Farm', "Ünïcødé ☃ 風", "  spaced  out  ",
             "A'); DROP TABLE curtailment_records; --", "back\\slash", "tab\there", "50%_off")


def test_farm_ids_with_quotes_unicode_spaces_and_sql_are_written_exactly(database_url, tmp_path):
    """Eight odd farm ids and farm A share 2023-12-01 period 1 (-1 to -9 MWh): 27 rows, each
    farm's share of the pooled period."""
    insert_difficulty(database_url, {"2023-12-01": HARD})
    records = [(DECEMBER_1, 1, farm, f"-{i + 1}") for i, farm in enumerate(("A", *ODD_FARMS))]
    insert_curtailment(database_url, [(d.isoformat(), p, f, v) for d, p, f, v in records])

    first = engine("month", "2023-12", url=database_url, data_dir=tmp_path)
    again = engine("month", "2023-12", "--json", url=database_url, data_dir=tmp_path)

    assert first.exit_code == 0, first.output
    assert bitcoin(database_url) == recompute(records, {DECEMBER_1: HARD})
    assert {key[2] for key in bitcoin(database_url)} == {"A", *ODD_FARMS}
    assert json.loads(again.stdout)["rows"]["inserted"] == 0
    assert execute(database_url, "SELECT count(*) FROM curtailment_records") == [(9,)]


@pytest.mark.parametrize(("day", "period"), [("2023-12-01", 0), ("2023-12-01", -1),
                                             ("2023-12-01", 51), ("2023-12-01", 49),
                                             ("2023-10-29", 51), ("2023-03-26", 47)])
def test_a_period_the_day_does_not_have_fails_the_month_naming_it(day, period, database_url, tmp_path):
    month = day[:7]
    insert_difficulty(database_url, {day: HARD})
    insert_curtailment(database_url, [(day, 1, "A", "-10"), (day, period, "B", "-2")])

    message = one_line_error(engine("month", month, url=database_url, data_dir=tmp_path))

    assert f"{day} period {period}, farm B" in message
    assert bitcoin(database_url) == {}
    assert progress(database_url, month)[0] == "failed"


def test_records_outside_the_month_are_neither_read_nor_changed(database_url, tmp_path):
    """Records on 2023-11-30, 2023-12-31 and 2024-01-01, difficulty for 2023-12-31 only, and
    a row of 2024-01-01 that is wrong: December inserts the 3 rows of the 31st; the missing
    difficulties of the neighbours do not fail it and the January row stays as it was."""
    insert_curtailment(database_url, [("2023-11-30", 48, "A", "-5"), ("2023-12-31", 48, "A", "-5"),
                                      ("2024-01-01", 1, "A", "-5")])
    insert_difficulty(database_url, {"2023-12-31": HARD})
    january = {(date(2024, 1, 1), 1, "A", "S9"): Decimal(7)}
    insert_calculations(database_url, [(key, value, "1") for key, value in january.items()])

    result = engine("month", "2023-12", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0, result.output
    december = recompute([(date(2023, 12, 31), 48, "A", "-5")], {date(2023, 12, 31): HARD})
    assert bitcoin(database_url) == {**december, **january}


@pytest.mark.parametrize("text", ["1999-12", "2101-01", "0000-01", "2023-00"])
def test_a_month_outside_the_calendar_the_engine_serves_is_refused(text, database_url, tmp_path):
    insert_curtailment(database_url, [("1999-12-31", 1, "A", "-5")])

    message = one_line_error(engine("month", text, url=database_url, data_dir=tmp_path))

    assert message.startswith(f"error: month {text!r}")
    assert execute(database_url, "SELECT count(*) FROM reconciliation_runs") == [(0,)]


def test_rows_of_a_miner_model_the_engine_does_not_know_are_reported_and_kept(
        database_url, tmp_path):
    """A reconciled day plus two rows of models not in the models file for its key: they are
    orphans, reported and left alone; the month verifies."""
    present = seed_good_day(database_url)
    unknown = {(DECEMBER_1, 1, "A", "S21_XP"): Decimal("0.1"),
               (DECEMBER_1, 1, "A", "s9"): Decimal("0.2")}
    insert_calculations(database_url, [(key, value, HARD) for key, value in unknown.items()])

    result = engine("month", "2023-12", "--json", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "verified" and payload["rows"]["orphans"] == 2
    assert bitcoin(database_url) == {**present, **unknown}


def test_an_empty_month_is_nothing_to_do_and_records_no_run(database_url, tmp_path):
    seed_good_day(database_url)  # December has data; November has none

    result = engine("month", "2023-11", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0
    assert result.stdout.strip() == "2023-11  no curtailment and no calculations: nothing to do"
    assert execute(database_url, "SELECT count(*) FROM reconciliation_runs") == [(0,)]
    assert len(bitcoin(database_url)) == 3


def test_a_month_whose_records_are_all_zero_expects_nothing_and_keeps_its_rows(
        database_url, tmp_path):
    """2023-12-05 period 3: farm Z with volumes 0 and 0 does not qualify, and an old row for
    it is an orphan: kept, reported."""
    insert_curtailment(database_url, [("2023-12-05", 3, "Z", "0"), ("2023-12-05", 3, "Z", "0")])
    old = {(date(2023, 12, 5), 3, "Z", "S9"): Decimal("0.00000001")}
    insert_calculations(database_url, [(key, value, HARD) for key, value in old.items()])

    result = engine("month", "2023-12", "--json", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert (rows["expected"], rows["inserted"], rows["orphans"]) == (0, 0, 1)
    assert bitcoin(database_url) == old


def test_a_month_with_one_record_gets_one_row_per_model(database_url, tmp_path):
    """One record, 2023-12-24 period 17, farm T_1, -0.001 MWh: one whole S9 (661.5 W a half
    hour), no S19J_PRO or M20S; 3 rows all the same, two of them 0."""
    insert_curtailment(database_url, [("2023-12-24", 17, "T_1", "-0.001")])
    insert_difficulty(database_url, {"2023-12-24": HARD})

    first = engine("month", "2023-12", url=database_url, data_dir=tmp_path)
    second = engine("month", "2023-12", url=database_url, data_dir=tmp_path)

    assert first.exit_code == second.exit_code == 0
    want = recompute([(date(2023, 12, 24), 17, "T_1", "-0.001")], {date(2023, 12, 24): HARD})
    assert bitcoin(database_url) == want
    assert sorted(want.values()) == [0, 0, Decimal("0.00000018")]
    assert "inserted 0 (nothing was missing)" in second.stdout


# --- hostile input -------------------------------------------------------------------------------

INJECTIONS = ("2023-12'; DROP TABLE curtailment_records; --",
              "2023-12..2024-01'; TRUNCATE historical_bitcoin_calculations; --",
              "2023-12 OR 1=1", "$1", "2023-12\n; DELETE FROM bitcoin_difficulty")


@pytest.mark.parametrize("command", [("month",), ("status-month",), ("demo", "--months")])
def test_sql_in_a_month_is_refused_and_changes_nothing(command, database_url, tmp_path):
    present = seed_good_day(database_url)

    for text in INJECTIONS:
        message = one_line_error(engine(*command, text, url=database_url, data_dir=tmp_path))
        assert message.startswith("error: month "), text

    assert bitcoin(database_url) == present
    assert execute(database_url, "SELECT count(*) FROM curtailment_records") == [(1,)]
    assert execute(database_url, "SELECT count(*) FROM bitcoin_difficulty") == [(2,)]


@pytest.mark.parametrize("variable", ["ENGINE_LOCK_TIMEOUT_MS", "ENGINE_STATEMENT_TIMEOUT_MS"])
def test_sql_in_a_timeout_setting_is_refused(variable, database_url, tmp_path):
    present = seed_good_day(database_url)

    message = one_line_error(engine("month", "2023-12", url=database_url, data_dir=tmp_path,
                                    **{variable: "1; DROP TABLE curtailment_records"}))

    assert variable in message and "not a whole number" in message
    assert bitcoin(database_url) == present


def test_a_miner_model_named_with_sql_is_only_ever_data(database_url, tmp_path):
    """A models file whose one model is named `S9'); DROP TABLE curtailment_records; --`
    (S9's specs): the month gets one row under that exact name, and every table survives."""
    name = "S9'); DROP TABLE curtailment_records; --"
    models = tmp_path / "models.toml"
    models.write_text(f'["{name}"]\nhashrate_th = 13.5\npower_w = 1323\n')
    insert_curtailment(database_url, [("2023-12-01", 1, "A", "-10")])
    insert_difficulty(database_url, {"2023-12-01": HARD})

    result = engine("month", "2023-12", url=database_url, data_dir=tmp_path,
                    ENGINE_MINER_MODELS=str(models))

    assert result.exit_code == 0, result.output
    s9 = recompute([(DECEMBER_1, 1, "A", "-10")], {DECEMBER_1: HARD})[(DECEMBER_1, 1, "A", "S9")]
    assert bitcoin(database_url) == {(DECEMBER_1, 1, "A", name): s9}
    assert execute(database_url, "SELECT count(*) FROM curtailment_records") == [(1,)]


def test_a_difficulty_file_with_sql_in_a_value_is_refused(database_url, tmp_path):
    hostile = tmp_path / "difficulty.csv"
    hostile.write_text("date,difficulty\n2023-12-01,1e14); DROP TABLE bitcoin_difficulty; --\n")
    insert_difficulty(database_url, {"2023-12-02": HARD})

    message = one_line_error(engine("difficulty", "load", str(hostile), url=database_url,
                                    data_dir=tmp_path))

    assert "difficulty.csv" in message
    assert execute(database_url, "SELECT settlement_date, difficulty::text FROM bitcoin_difficulty") \
        == [(date(2023, 12, 2), HARD)]


# --- a password in the database URL --------------------------------------------------------------

PASSWORD = "right-password"  # tests/conftest.py gives the probe role this password


@pytest.fixture
def password_url(database_url: str) -> str:
    """The test database as the role that must log in with a password (scram over TCP)."""
    if os.environ.get("ENGINE_TEST_DATABASE_URL"):
        pytest.skip("needs the embedded test server, where one role requires a password")
    for grant in ("ALL ON ALL TABLES IN SCHEMA public", "ALL ON ALL SEQUENCES IN SCHEMA public",
                  "USAGE ON SCHEMA engine", "ALL ON ALL TABLES IN SCHEMA engine",
                  "ALL ON ALL SEQUENCES IN SCHEMA engine"):
        execute(database_url, f"GRANT {grant} TO {PASSWORD_ROLE}")
    return re.sub(r"postgresql://[^@]*@", f"postgresql://{PASSWORD_ROLE}:{PASSWORD}@", database_url)


def run_cli(*args: str, url: str, data_dir: Path) -> subprocess.CompletedProcess:
    """The engine as its own process, so its logging goes where a user would see it."""
    return subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ENGINE_DATABASE_URL": url,
                               "ENGINE_DATA_DIR": str(data_dir)})


@pytest.mark.slow
def test_the_password_is_never_printed_logged_or_stored(password_url, database_url, tmp_path):
    seed_good_day(database_url)
    add_record(database_url, "2023-12-02", 9, "B", "-4")

    runs = [run_cli("-v", "month", "2023-12", "--json", url=password_url, data_dir=tmp_path),
            run_cli("-v", "month", "2023-12", url=password_url, data_dir=tmp_path),
            run_cli("--debug", "month", "2023-12", "--dry-run", url=password_url, data_dir=tmp_path)]
    add_record(database_url, "2023-12-03", 9, "B", "NaN")  # a failure, with a traceback
    runs.append(run_cli("--debug", "-v", "month", "2023-12", url=password_url, data_dir=tmp_path))

    assert [r.returncode for r in runs[:3]] == [0, 0, 0], runs[0].stderr
    assert runs[3].returncode != 0 and "Traceback" in runs[3].stderr
    assert "***" in runs[3].stderr  # the failure names the database, masked
    for run in runs:
        assert PASSWORD not in run.stdout + run.stderr
    stored = execute(database_url, """
        SELECT (SELECT coalesce(string_agg(r::text, ' '), '') FROM reconciliation_runs r)
            || (SELECT coalesce(string_agg(p::text, ' '), '') FROM reconciliation_progress p)""")
    assert len(stored[0][0]) > 100 and PASSWORD not in stored[0][0]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert len(bitcoin(database_url)) == 6
