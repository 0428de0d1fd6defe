"""The second attack: what an operator's probes found after the first round of fixes. Each
test fails on the code before its fix."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from engine.cli import app
from tests.conftest import execute
from tests.test_cli import engine
from tests.test_faults import seed_december
from tests.test_hostile_files import one_line_error

runner = CliRunner()


def test_a_huge_samples_count_is_refused_in_one_line(database_url: str, tmp_path: Path) -> None:
    result = engine("diff", "2023-12", "--samples", "9" * 23, url=database_url, data_dir=tmp_path)

    assert result.exit_code == 2 and "Traceback" not in result.output


def test_a_miner_models_file_that_is_a_device_or_a_fifo_is_refused_before_it_is_read(
        database_url: str, tmp_path: Path) -> None:
    fifo = tmp_path / "models.fifo"
    os.mkfifo(fifo)
    for target in ("/dev/zero", str(fifo)):
        result = runner.invoke(app, ["month", "2023-12", "--dry-run"], env={
            "ENGINE_DATABASE_URL": database_url, "ENGINE_DATA_DIR": str(tmp_path),
            "ENGINE_MINER_MODELS": target})

        assert "special file" in one_line_error(result)


def test_a_wrong_file_given_as_difficulty_is_not_echoed(database_url: str, tmp_path: Path) -> None:
    secret = "hunter2-the-password"
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:5432:db:user:{secret}\n")
    as_json = tmp_path / "secret.json"
    as_json.write_text(f'{{"{secret}": 1}}')

    for path in (pgpass, as_json):
        message = one_line_error(engine("difficulty", "load", str(path), url=database_url,
                                        data_dir=tmp_path))

        assert secret not in message and "hunter" not in message


def test_report_output_without_markdown_is_refused_not_ignored(
        database_url: str, tmp_path: Path) -> None:
    result = engine("report", "--output", str(tmp_path / "r.md"), url=database_url,
                    data_dir=tmp_path)

    assert "--format markdown" in one_line_error(result)


def test_an_empty_variable_is_refused_not_taken_for_the_default(tmp_path: Path) -> None:
    for name in ("ENGINE_DATABASE_URL", "ENGINE_SCHEMA", "ENGINE_DATA_DIR"):
        result = runner.invoke(app, ["status"], env={"ENGINE_DATA_DIR": str(tmp_path), name: " "})

        assert f"{name} is set but empty" in one_line_error(result)


def test_a_replaced_output_keeps_its_mode(database_url: str, tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    target.write_text("old")
    target.chmod(0o444)

    result = engine("report", "--html", str(target), url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o444 and "<html" in target.read_text()


def test_debug_adds_the_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    env = {**os.environ, "ENGINE_DATABASE_URL": "postgresql://x@127.0.0.1:1/db",
           "ENGINE_DATA_DIR": str(tmp_path), "ENGINE_CONNECT_TIMEOUT_S": "2"}
    command = [sys.executable, "-m", "engine"]

    plain = subprocess.run([*command, "status"], env=env, capture_output=True, text=True)
    debug = subprocess.run([*command, "--debug", "status"], env=env, capture_output=True, text=True)

    assert plain.returncode == debug.returncode == 2
    assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr


def test_a_backfill_left_running_by_a_killed_process_is_closed_by_the_next(
        database_url: str, tmp_path: Path) -> None:
    seed_december(database_url)
    execute(database_url, """INSERT INTO reconciliation_backfills (command, status, pid)
                             VALUES ('run', 'running', 1)""")

    result = engine("run", "--json", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 0, result.output
    rows = execute(database_url, "SELECT status, error FROM reconciliation_backfills ORDER BY id")
    assert rows == [("interrupted", "abandoned: its process stopped"), ("completed", None)]
