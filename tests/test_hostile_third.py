"""What a third attack found: inputs that still ended in a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_engine(args: list[str], database_url: str, tmp_path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINE_DATABASE_URL": database_url, "ENGINE_DATA_DIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "engine", *args], env=env, text=True,
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("args", [["undo", "9" * 24], ["undo", "--backfill", "9" * 24]])
def test_undo_of_an_id_beyond_bigint_is_bad_input(args, database_url, tmp_path):
    done = run_engine(args, database_url, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "OverflowError" not in done.stderr
    assert "9" * 24 not in done.stderr
