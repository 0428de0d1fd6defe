"""Hostile and mistaken input to the command line: every file-system and input error is one
line with its own exit code (2 bad input, 74 an environment problem), never a traceback, and
nothing is deleted or truncated that the engine did not create."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import EnvironmentProblem
from engine.repairs.actions import ACTIONS_SCHEMA
from engine.repairs.plans import METADATA_KEY
from engine.repairs.plans import read as read_plan
from engine.store.config import Settings
from engine.store.paths import write_atomic
from tests.conftest import execute, insert_curtailment, insert_difficulty
from tests.test_faults import ENGINE
from tests.test_repair import seed_damaged_december

runner = CliRunner()


def engine(*args: str, data_dir: Path, url: str | None = None, **env: str):
    environment = {"ENGINE_DATA_DIR": str(data_dir), **env}
    if url is not None:
        environment["ENGINE_DATABASE_URL"] = url
    return runner.invoke(app, list(args), env=environment)


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr


def test_a_huge_argument_is_quoted_in_at_most_about_80_characters(database_url, tmp_path):
    digits = "9" * 100_000

    for args in (("month", digits), ("status-month", digits), ("run", "--order", digits),
                 ("report", "--format", digits), ("month", "2023-12", "--fix", digits)):
        message = one_line_error(engine(*args, url=database_url, data_dir=tmp_path))
        assert len(message) < 250 and "100,000 characters" in message, args


# --- outputs: special files, directories, missing folders, failed writes ------------------------

def _seed(url: str) -> None:
    """2023-12-01 period 1, farm A, -10 MWh, and its difficulty: 3 rows to insert."""
    insert_curtailment(url, [("2023-12-01", 1, "A", "-10")])
    insert_difficulty(url, {"2023-12-01": "100000000000000"})


def test_plan_to_dev_full_is_refused_and_the_device_survives(database_url, tmp_path):
    before = os.stat("/dev/full")

    message = one_line_error(engine("plan", "2023-12", "-o", "/dev/full", url=database_url,
                                    data_dir=tmp_path))

    assert "special file (a character device)" in message
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing folder", "under a file"])
def test_plan_to_a_fifo_a_directory_or_a_missing_folder_is_refused(kind, database_url, tmp_path):
    target = {"fifo": tmp_path / "plan.fifo", "directory": tmp_path / "plans",
              "missing folder": tmp_path / "nowhere" / "plan.parquet",
              "under a file": tmp_path / "file" / "plan.parquet"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "under a file":
        target.parent.write_text("a file, not a folder")

    one_line_error(engine("plan", "2023-12", "-o", str(target), url=database_url,
                          data_dir=tmp_path / "data"))

    assert kind != "fifo" or stat.S_ISFIFO(os.stat(target).st_mode)
    assert kind != "directory" or target.is_dir()


def test_a_plan_over_an_existing_file_replaces_it_whole(database_url, tmp_path):
    _seed(database_url)
    target = tmp_path / "plan.parquet"
    target.write_text("an older plan")

    result = engine("plan", "2023-12", "-o", str(target), url=database_url, data_dir=tmp_path / "d")

    assert result.exit_code == 0, result.output
    assert read_plan(target).rows.height == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "plan.parquet"]  # no temporary left


@pytest.mark.parametrize("option", ["--output", "--html"])
@pytest.mark.parametrize("target", ["/dev/full", "directory"])
def test_report_outputs_that_are_special_files_or_directories_are_refused(
        option, target, database_url, tmp_path):
    path = Path(target) if target.startswith("/") else tmp_path
    args = ("report", "--format", "markdown", option, str(path))

    message = one_line_error(engine(*args, url=database_url, data_dir=tmp_path / "data"))

    assert "special file" in message or "directory" in message
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_failed_write_leaves_the_target_as_it_was_and_no_temporary_file(tmp_path):
    """The writer fills a real full disk (/dev/full): ENOSPC, exit 74, the target untouched."""
    target = tmp_path / "report.md"
    target.write_text("the previous report")

    def fill(temporary: Path) -> None:
        temporary.write_text("half a report")
        with open("/dev/full", "w") as full:
            full.write("x" * 100_000)
            full.flush()

    with pytest.raises(EnvironmentProblem, match="the disk is full") as raised:
        write_atomic(target, fill)

    assert raised.value.exit_code == 74
    assert target.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


# --- the data directory: a file, read-only, full --------------------------------------------------

@pytest.mark.parametrize("where", ["a regular file", "under a regular file", "/proc", "/sys"])
def test_a_data_directory_that_cannot_be_written_is_exit_74_and_leaves_the_month_alone(
        where, database_url, tmp_path):
    _seed(database_url)
    data_dir = {"a regular file": tmp_path / "data", "under a regular file": tmp_path / "data" / "x",
                "/proc": Path("/proc/engine-data"), "/sys": Path("/sys/engine-data")}[where]
    if where in ("a regular file", "under a regular file"):
        (tmp_path / "data").write_text("ENGINE_DATA_DIR names this file")

    for args in (("month", "2023-12"), ("run", "--jobs", "1")):
        message = one_line_error(engine(*args, url=database_url, data_dir=data_dir), code=74)
        assert "data directory" in message and "Error" not in message, message

    assert execute(database_url, "SELECT count(*) FROM reconciliation_progress") == [(0,)]
    assert execute(database_url, "SELECT count(*) FROM historical_bitcoin_calculations") == [(0,)]


def test_a_full_disk_under_data_extracts_is_exit_74_and_the_month_is_not_failed(
        database_url, tmp_path):
    """The engine as its own process under a file-size limit of 1 KB (SIGXFSZ ignored, so a
    write past it fails with EFBIG, as a full disk fails with ENOSPC)."""
    _seed(database_url)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    done = subprocess.run([*ENGINE, "month", "2023-12"], capture_output=True, text=True,
                          timeout=120, preexec_fn=limit,
                          env={**os.environ, "ENGINE_DATABASE_URL": database_url,
                               "ENGINE_DATA_DIR": str(tmp_path / "data")})

    assert done.returncode == 74, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "month=2023-12/part-0.parquet" in done.stderr and "too large" in done.stderr
    assert execute(database_url, "SELECT count(*) FROM reconciliation_progress "
                                 "WHERE status = 'failed'") == [(0,)]
    assert not [p for p in (tmp_path / "data").rglob("*.tmp")]


def test_a_data_directory_that_is_a_file_is_exit_74_before_any_embedded_server(tmp_path):
    data_file = tmp_path / "data"
    data_file.write_text("ENGINE_DATA_DIR names this file")

    for args in (("status",), ("month", "2023-12"), ("db", "init")):
        result = runner.invoke(app, list(args), env={"ENGINE_DATA_DIR": str(data_file),
                                                     "ENGINE_DATABASE_URL": None})
        assert "is not a directory" in one_line_error(result, code=74), args

    assert data_file.read_text() == "ENGINE_DATA_DIR names this file"


def test_a_read_only_command_on_a_mistyped_data_directory_starts_no_server(tmp_path):
    typo = tmp_path / "dta"

    for args in (("status",), ("report",), ("diff", "2023-12"), ("undo", "1")):
        result = runner.invoke(app, list(args), env={"ENGINE_DATA_DIR": str(typo),
                                                     "ENGINE_DATABASE_URL": None})
        message = one_line_error(result)
        assert "engine demo" in message and "engine db init" in message, args

    assert not typo.exists()


# --- numbers that are not finite ----------------------------------------------------------------

@pytest.mark.parametrize("args", [("--max-rows-per-second", "inf"), ("--pause", "inf"),
                                  ("--pause", "nan"), ("--max-rows-per-second", "nan")])
def test_infinite_or_nan_throttles_are_refused_when_parsed(args, tmp_path):
    result = engine("run", *args, data_dir=tmp_path, url="postgresql://x@127.0.0.1:1/never")

    assert result.exit_code == 2 and args[0] in result.stderr
    assert "Traceback" not in result.stderr and "cannot connect" not in result.stderr


# --- damaged plans and undo records --------------------------------------------------------------

def _plan_with_metadata(path: Path, metadata: bytes) -> Path:
    table = pl.DataFrame(schema=ACTIONS_SCHEMA).to_arrow()
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: metadata}), path)
    return path


GOOD_METADATA = {"format": 1, "month": "2023-12", "fix": ["drift"], "formula": "v1",
                 "fingerprint": "sha256:0", "models": ["S9"], "created_at": "2026-01-01T00:00:00"}


@pytest.mark.parametrize(("name", "metadata", "says"), [
    ("bad json", b"{not json", "not valid JSON"),
    ("a list", b"[1, 2]", "not a JSON object"),
    ("no month", json.dumps({k: v for k, v in GOOD_METADATA.items() if k != "month"}).encode(),
     "lacks its 'month'"),
    ("month 202312", json.dumps({**GOOD_METADATA, "month": 202312}).encode(),
     "has '202312' (a number) as its 'month', which must be a string"),
    ("month '202312'", json.dumps({**GOOD_METADATA, "month": "202312"}).encode(), "is not of the form"),
    ("fix a string", json.dumps({**GOOD_METADATA, "fix": "drift"}).encode(), "'fix'"),
    ("deep", b"[" * 100_000, "not valid JSON"),
])
def test_apply_of_a_plan_with_bad_metadata_is_one_line(name, metadata, says, database_url, tmp_path):
    plan = _plan_with_metadata(tmp_path / "plan.parquet", metadata)

    message = one_line_error(engine("apply", str(plan), url=database_url, data_dir=tmp_path))

    assert says in message, name
    assert execute(database_url, "SELECT count(*) FROM reconciliation_runs") == [(0,)]


def test_apply_of_a_fifo_is_refused_without_opening_it(database_url, tmp_path):
    os.mkfifo(tmp_path / "plan.parquet")

    message = one_line_error(engine("apply", str(tmp_path / "plan.parquet"), url=database_url,
                                    data_dir=tmp_path))

    assert "FIFO" in message


def _fixed_run(url: str, data_dir: Path) -> tuple[int, Path]:
    """The damaged December reconciled with --fix all: a run with an undo record that holds
    a manifest, before-images (2 updated, 2 deleted) and nothing inserted."""
    seed_damaged_december(url, Settings(database_url=url, data_dir=data_dir))
    result = engine("month", "2023-12", "--fix", "all", "--json", url=url, data_dir=data_dir)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    return payload["run_id"], Path(payload["files"]["undo"])  # data/undo/<database>/<run id>


@pytest.mark.parametrize("damage", ["manifest cut", "manifest not an object", "before-image cut"])
def test_undo_with_a_damaged_record_is_one_line_and_changes_nothing(damage, database_url, tmp_path):
    run_id, folder = _fixed_run(database_url, tmp_path)
    table = execute(database_url, "SELECT * FROM historical_bitcoin_calculations ORDER BY id")
    if damage == "manifest cut":
        text = (folder / "manifest.json").read_text()
        (folder / "manifest.json").write_text(text[: len(text) // 2])
    elif damage == "manifest not an object":
        (folder / "manifest.json").write_text("[]")
    else:
        data = (folder / "before.parquet").read_bytes()
        (folder / "before.parquet").write_bytes(data[: len(data) // 2])

    message = one_line_error(engine("undo", str(run_id), url=database_url, data_dir=tmp_path))

    assert f"the undo record of run {run_id}" in message and "damaged" in message
    assert execute(database_url, "SELECT * FROM historical_bitcoin_calculations ORDER BY id") == table


def test_undo_of_an_undo_and_of_a_run_that_does_not_exist_say_so(database_url, tmp_path):
    run_id, _ = _fixed_run(database_url, tmp_path)
    undone = engine("undo", str(run_id), "--json", url=database_url, data_dir=tmp_path)
    assert undone.exit_code == 0, undone.output
    undo_id = json.loads(undone.stdout)["undo_run_id"]

    of_undo = one_line_error(engine("undo", str(undo_id), url=database_url, data_dir=tmp_path))
    unknown = one_line_error(engine("undo", "999999", url=database_url, data_dir=tmp_path))

    assert f"run {undo_id} is an undo (of run {run_id})" in of_undo
    assert unknown == "error: there is no run 999999\n"


def test_a_huge_path_is_quoted_in_a_few_dozen_characters(database_url, tmp_path):
    huge = str(tmp_path / ("p" * 100_000))

    for args in (("difficulty", "load", huge), ("plan", "2023-12", "-o", huge), ("apply", huge),
                 ("report", "--html", huge)):
        message = one_line_error(engine(*args, url=database_url, data_dir=tmp_path / "data"))
        assert len(message) < 300 and "100,0" in message, (args[0], message[:300])
