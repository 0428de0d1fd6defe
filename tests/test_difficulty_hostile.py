"""`engine difficulty load` distrusts its file: duplicates, dates out of range, values the column
would round, oversized, special, deeply nested or non-UTF-8 files are each refused in one line
before anything is written; `--dry-run` shows what a load would change."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from tests.conftest import execute, insert_difficulty
from tests.test_faults import ENGINE

runner = CliRunner()
REAL = "72006146478567"


def load(path: Path, *options: str, url: str, tmp_path: Path):
    return runner.invoke(app, ["difficulty", "load", str(path), *options],
                         env={"ENGINE_DATABASE_URL": url, "ENGINE_DATA_DIR": str(tmp_path / "data")})


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr) < 400, result.stderr[:400]
    return result.stderr


def stored(url: str) -> list[tuple]:
    return execute(url, "SELECT settlement_date, difficulty::text FROM bitcoin_difficulty ORDER BY 1")


@pytest.fixture
def real_value(database_url: str) -> str:
    """One real difficulty already stored: 2024-01-01, 72006146478567."""
    insert_difficulty(database_url, {"2024-01-01": REAL})
    return database_url


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_a_json_key_given_twice_is_refused_and_the_real_value_kept(real_value, tmp_path):
    path = write(tmp_path, "twice.json", '{"2024-01-01": "72006146478567", "2024-01-01": "1"}')

    assert "'2024-01-01' is given twice" in one_line_error(load(path, url=real_value, tmp_path=tmp_path))
    assert stored(real_value) == [(date(2024, 1, 1), REAL)]


@pytest.mark.parametrize(("value", "says"), [("0.00000000001", "would be stored as 0"),
                                             ("1e-11", "would be stored as 0"),
                                             ("5.00000000001", "would be stored as 5.0000000000"),
                                             ("1e27", "too large"), ("-5", "positive"),
                                             ("0", "positive")])
def test_a_value_the_column_would_round_or_cannot_hold_is_refused(value, says, real_value, tmp_path):
    for name, text in (("v.json", json.dumps({"2024-01-02": value})), ("v.csv", f"2024-01-02,{value}\n"),
                       ("n.json", f'{{"2024-01-02": {value}}}')):
        message = one_line_error(load(write(tmp_path, name, text), url=real_value, tmp_path=tmp_path))
        assert says in message, (name, message)
    assert stored(real_value) == [(date(2024, 1, 1), REAL)]


@pytest.mark.parametrize("day", ["1900-01-01", "2009-01-02", "0001-01-01", "9999-12-31", "after"])
def test_a_date_outside_the_genesis_block_to_tomorrow_is_refused(day, real_value, tmp_path):
    if day == "after":
        day = (datetime.now(UTC).date() + timedelta(days=2)).isoformat()
    path = write(tmp_path, "d.csv", f"2024-01-02,5\n{day},7\n")

    assert f"date {day} is outside" in one_line_error(load(path, url=real_value, tmp_path=tmp_path))
    assert stored(real_value) == [(date(2024, 1, 1), REAL)]


def test_tomorrow_and_the_genesis_block_are_accepted_and_earliest_widens_the_range(
        database_url, tmp_path):
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    ends = write(tmp_path, "ends.csv", f"2009-01-03,1\n{tomorrow},2\n")
    old = write(tmp_path, "old.csv", "1999-12-31,3\n")

    assert load(ends, url=database_url, tmp_path=tmp_path).exit_code == 0
    assert load(old, "--earliest", "1999-01-01", url=database_url, tmp_path=tmp_path).exit_code == 0
    assert [d for d, _ in stored(database_url)] == [date(1999, 12, 31), date(2009, 1, 3), tomorrow]


def test_a_file_over_the_size_limit_is_refused_without_being_read(database_url, tmp_path):
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as handle:  # 60 MB of nothing (sparse): only its size is looked at
        handle.truncate(60 * 1024 * 1024)
    small = write(tmp_path, "small.csv", "2024-01-02,5\n" * 200)

    assert "more than the limit of 52,428,800" in one_line_error(
        load(huge, url=database_url, tmp_path=tmp_path))
    assert "more than the limit" in one_line_error(
        load(small, "--max-mb", "0.001", url=database_url, tmp_path=tmp_path))
    assert stored(database_url) == []


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_special_file_is_refused_before_it_is_opened(kind, database_url, tmp_path):
    """A FIFO with no writer would block `open()` forever: the engine must not open it."""
    path = {"fifo": tmp_path / "difficulty.json", "device": Path("/dev/zero"),
            "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)

    done = subprocess.run([*ENGINE, "difficulty", "load", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "ENGINE_DATABASE_URL": database_url,
                                                      "ENGINE_DATA_DIR": str(tmp_path / "data")})

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert {"fifo": "a FIFO", "device": "a character device", "directory": "a directory"}[kind] \
        in done.stderr


@pytest.mark.parametrize(("name", "content", "says"), [
    ("digits.json", '{"2024-01-02": ' + "9" * 5000 + "}", "5,000 characters"),
    ("digits-string.json", '{"2024-01-02": "' + "9" * 5000 + '"}', "5,000 characters long"),
    ("digits.csv", "2024-01-02," + "9" * 5000 + "\n", "5,000 characters long"),
    ("nested.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("nested-object.json", '{"a": ' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ("latin1.csv", "2024-01-02,5\n2024-01-03,\xe9\n".encode("latin-1"), "not UTF-8"),
    ("field.csv", "2024-01-02," + "7" * 2_000_000 + "\n", "line 1"),
    ("field.json", '{"2024-01-02": "' + "7" * 2_000_000 + '"}', "2,000,000 characters long"),
    ("key.json", '{"' + "2" * 2_000_000 + '": "5"}', "is not a date"),
    ("object.json", '{"2024-01-02": {"value": 5}}', "must be a positive number"),
    ("null.json", '{"2024-01-02": null}', "must be a positive number"),
    ("true.json", '{"2024-01-02": true}', "must be a positive number"),
    ("nan.json", '{"2024-01-02": NaN}', "NaN is not a difficulty"),
    ("week.json", '{"2024-W01-1": "5"}', "is not a date"),
    ("compact.json", '{"20240102": "5"}', "is not a date"),
    ("nul.csv", "2024-01-02,5\x00\n", "must be a positive number"),
])
def test_hostile_content_is_one_line(name, content, says, real_value, tmp_path):
    message = one_line_error(load(write(tmp_path, name, content), url=real_value, tmp_path=tmp_path))

    assert says in message, message
    assert stored(real_value) == [(date(2024, 1, 1), REAL)]


def test_dry_run_shows_new_updated_and_unchanged_dates_and_writes_nothing(real_value, tmp_path):
    insert_difficulty(real_value, {"2024-01-02": "5"})
    path = write(tmp_path, "d.json", json.dumps({"2024-01-01": "1", "2024-01-02": "5",
                                                 "2024-01-03": "7"}))

    dry = load(path, "--dry-run", url=real_value, tmp_path=tmp_path)
    dry_json = load(path, "--dry-run", "--json", url=real_value, tmp_path=tmp_path)

    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "3 date(s) from 2024-01-01 to 2024-01-03: 1 new, 1 to update, 1 unchanged",
        f"  2024-01-01  {REAL} → 1",
        "dry run: nothing was written"]
    payload = json.loads(dry_json.stdout)
    assert (payload["dry_run"], payload["inserted"], payload["updated"], payload["unchanged"]) \
        == (True, 1, 1, 1)
    assert payload["changes"] == [{"date": "2024-01-01", "old": REAL, "new": "1"}]
    assert stored(real_value) == [(date(2024, 1, 1), REAL), (date(2024, 1, 2), "5")]

    done = load(path, url=real_value, tmp_path=tmp_path)

    assert done.stdout.splitlines()[:2] == [
        "3 date(s) from 2024-01-01 to 2024-01-03: 1 inserted, 1 updated, 1 unchanged",
        f"  2024-01-01  {REAL} → 1"]
    assert stored(real_value) == [(date(2024, 1, 1), "1"), (date(2024, 1, 2), "5"),
                                  (date(2024, 1, 3), "7")]
