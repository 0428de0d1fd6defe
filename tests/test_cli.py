"""The `engine` command line: exit codes, one-line errors, masked passwords, `--json`, help."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from engine.cli import app
from engine.reference import REFERENCE_DIR
from tests.conftest import PASSWORD_ROLE, calculations, insert_curtailment, insert_difficulty
from tests.test_pipeline import seed_december

GOLDEN = Path(__file__).parent / "golden"
README = Path(__file__).parent.parent / "README.md"
runner = CliRunner()


def engine(*args: str, url: str, data_dir: Path):
    return runner.invoke(app, list(args), env={"ENGINE_DATABASE_URL": url,
                                              "ENGINE_DATA_DIR": str(data_dir)})


@pytest.mark.parametrize("text", ["2023-13", "23-12", "2023/12", "2023-1", "december",
                                  "2023-12'; DROP TABLE curtailment_records; --"])
def test_a_bad_month_is_one_line_on_stderr_and_exit_2(text, database_url, tmp_path):
    result = engine("month", text, url=database_url, data_dir=tmp_path)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: month ")
    assert "Traceback" not in result.stderr


def test_month_prints_a_summary_and_a_rerun_says_nothing_was_missing(database_url, tmp_path):
    seed_december(database_url)

    first = engine("month", "2023-12", url=database_url, data_dir=tmp_path)
    second = engine("month", "2023-12", url=database_url, data_dir=tmp_path)

    assert first.exit_code == 0, first.output
    assert "verified" in first.stdout and "inserted 9" in first.stdout
    assert second.exit_code == 0
    assert "inserted 0 (nothing was missing)" in second.stdout


def result_run(result) -> int:
    return json.loads(result.stdout)["run_id"]


def test_month_json_matches_the_golden_file(database_url, tmp_path):
    seed_december(database_url)

    result = engine("month", "2023-12", "--json", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    payload["run_id"] = 1
    payload["seconds"] = 0.0
    payload["timings"] = dict.fromkeys(payload["timings"], 0.0)
    payload["files"] = {k: Path(v).relative_to(tmp_path).as_posix() for k, v in payload["files"].items()}
    # Undo images live in a folder per database (its server's identity and its name).
    database, run = payload["files"]["undo"].split("/")[1:]
    assert database.endswith("-" + database_url.rsplit("/", 1)[1]) and run == str(result_run(result))
    payload["files"]["undo"] = "undo/DATABASE/1"
    golden = GOLDEN / "month_2023-12.json"
    if os.environ.get("ENGINE_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(payload, indent=2) + "\n")
    assert payload == json.loads(golden.read_text())


def test_dry_run_exits_0_and_writes_nothing(database_url, tmp_path):
    seed_december(database_url)

    result = engine("month", "2023-12", "--dry-run", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0 and "would insert 9" in result.stdout
    assert calculations(database_url) == []


def test_missing_difficulty_exits_2_naming_the_dates(database_url, tmp_path):
    insert_curtailment(database_url, [("2023-12-07", 9, "B", "-2")])
    insert_difficulty(database_url, {"2023-12-08": "1"})

    result = engine("month", "2023-12", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no difficulty for 1 date(s) with curtailment: 2023-12-07; "
        "load them with `engine difficulty load FILE`")


def test_an_unreachable_database_exits_2_without_showing_the_password(tmp_path):
    url = "postgresql://someone:hunter2-secret@127.0.0.1:1/engine"

    result = engine("month", "2023-12", url=url, data_dir=tmp_path)

    assert result.exit_code == 2
    assert "hunter2-secret" not in result.output
    assert "postgresql://someone:***@127.0.0.1:1/engine" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_wrong_password_exits_2_and_is_masked(server_url, tmp_path):
    if os.environ.get("ENGINE_TEST_DATABASE_URL"):
        pytest.skip("needs the embedded test server, where one role requires a password")
    url = re.sub(r"postgresql://[^@]*@", f"postgresql://{PASSWORD_ROLE}:wrong-password@", server_url)

    result = engine("month", "2023-12", "--json", url=url, data_dir=tmp_path)

    assert result.exit_code == 2
    assert "password authentication failed" in result.stderr
    assert "wrong-password" not in result.output and "***" in result.stderr


def test_a_url_that_is_not_postgresql_is_refused(tmp_path):
    result = engine("month", "2023-12", url="mysql://localhost/x", data_dir=tmp_path)

    assert result.exit_code == 2 and "must start with postgresql://" in result.stderr


def test_db_init_reports_what_it_created(database_url, tmp_path):
    result = engine("db", "init", "--json", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"created_tables": [], "created_indexes": [],
                                         "unique_key": "present", "duplicate_keys": 0,
                                         "surplus_rows": 0, "engine_schema": "engine",
                                         "moved": [], "foreign": [], "proposed": [], "notes": []}


def test_difficulty_load_reads_the_shipped_file(database_url, tmp_path):
    shipped = REFERENCE_DIR / "difficulty_2024.json"

    result = engine("difficulty", "load", str(shipped), url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0
    assert "366 date(s) from 2024-01-01 to 2024-12-31: 366 inserted" in result.stdout


def _commands(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix}{name}", command))
        if hasattr(command, "commands"):
            found.extend(_commands(command, f"{prefix}{name} "))
    return found


@pytest.mark.parametrize(("name", "command"), _commands(get_command(app)))
def test_every_command_has_help_and_is_in_the_readme(name, command):
    assert command.help and len(command.help.strip()) > 20
    assert f"engine {name}" in README.read_text()
