"""The notebooks run top to bottom, headless, against a real database with one demo month:
before it is reconciled (the backlog) and after. Committed notebooks carry no outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from engine.demo import fill_database
from engine.month.reconcile import reconcile_month
from engine.month.session import open_session
from engine.months import Month
from engine.store.config import Settings

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("explore_gaps.ipynb", "throughput.ipynb")


def run_notebook(name: str, settings: Settings) -> str:
    """Execute the notebook in the project's `python3` kernel with the test database and data
    dir in its environment; return the text of every output. A cell that errors raises
    `CellExecutionError` with its traceback."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {**os.environ, "ENGINE_DATABASE_URL": str(settings.database_url),
           "ENGINE_DATA_DIR": str(settings.data_dir)}
    client = NotebookClient(notebook, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    return "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


@pytest.fixture
def demo(settings: Settings, database_url: str) -> Settings:
    """One demo month (December 2023), not reconciled."""
    fill_database(database_url, [Month(2023, 12)], embedded=False)
    return settings


def test_committed_notebooks_carry_no_outputs() -> None:
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert set(NAMES) <= {p.name for p in paths}
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code, path.name
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code), path.name
        assert notebook.metadata["kernelspec"]["name"] == "python3", path.name


@pytest.mark.slow
def test_explore_gaps_runs_before_reconciliation_and_shows_the_backlog(demo: Settings) -> None:
    text = run_notebook("explore_gaps.ipynb", demo)
    assert f"python {sys.executable}" in text  # the kernel is the project's own interpreter
    assert "source: database" in text
    assert "status: missing · the steps, the kernel and expected_rows agree: True" in text


@pytest.mark.slow
def test_both_notebooks_run_after_reconciliation(demo: Settings) -> None:
    with open_session(demo) as session:
        assert reconcile_month(session, Month(2023, 12)).status == "verified"
    gaps = run_notebook("explore_gaps.ipynb", demo)
    assert "source: recorded" in gaps  # nothing is missing now: the backlog the run filled
    assert "status: present · the steps, the kernel and expected_rows agree: True" in gaps
    throughput = run_notebook("throughput.ipynb", demo)
    assert "1 run(s) of 1 month(s)" in throughput
    assert "0 run(s) not verified" in throughput
