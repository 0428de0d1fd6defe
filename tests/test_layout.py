"""The package as a newcomer and an installer meet it: the tree reads as the architecture, the
command line starts without the data libraries, and a built wheel works from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "engine"
DATA_LIBRARIES = ("polars", "duckdb", "connectorx", "pyarrow", "adbc_driver_manager", "numpy")
#: The sub-packages, in the order of the data flow and the layers beneath it.
SUBPACKAGES = ("store", "formula", "month", "repairs", "operations", "reporting", "explore",
               "reference", "cli", "demo")
MAX_LINES = 400


def _loaded_after(code: str) -> set[str]:
    """The top-level modules loaded by a fresh interpreter after running `code`."""
    script = f"import sys\n{code}\nprint(','.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return set(out.stdout.strip().splitlines()[-1].split(","))


def test_every_module_is_in_a_subpackage_and_none_is_over_400_lines() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}

    assert top == ["__init__.py", "__main__.py", "errors.py", "months.py"]
    assert sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()) == sorted(
        SUBPACKAGES)
    assert long == {}


def test_engine_help_loads_no_data_library() -> None:
    loaded = _loaded_after("sys.argv = ['engine', '--help']\nfrom engine.cli import main\n"
                           "try:\n    main()\nexcept SystemExit:\n    pass")

    assert loaded.isdisjoint(DATA_LIBRARIES), sorted(loaded & set(DATA_LIBRARIES))


@pytest.mark.parametrize("renderer", ["results", "status_text", "html_page"])
def test_renderers_import_no_pipeline(renderer: str) -> None:
    script = (f"import sys\nimport engine.reporting.{renderer}\n"
              "print(sorted(m for m in sys.modules if m.startswith(('engine.month.', "
              "'engine.operations.', 'engine.repairs.'))))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT)

    assert out.stdout.strip() == "[]"


def test_reference_data_ships_inside_the_package() -> None:
    from engine.reference import REFERENCE_DIR

    assert REFERENCE_DIR.is_relative_to(PACKAGE)
    assert {p.name for p in REFERENCE_DIR.iterdir()} >= {
        "miner_models.toml", "bmu_mapping.json", "difficulty_2024.json"}


@pytest.mark.slow
def test_a_built_wheel_runs_the_demo_from_an_unrelated_directory(
        tmp_path: Path, database_url: str) -> None:
    """`uv build`, a fresh virtual environment with only the wheel, `engine demo --months
    2023-12` run from an empty folder: the reference data must come from the package."""
    dist, env, elsewhere = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(["uv", "build", "--wheel", "--out-dir", str(dist), str(ROOT)], check=True,
                   capture_output=True)
    wheel = next(dist.glob("engine-*.whl"))
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    subprocess.run(["uv", "pip", "install", "--python", str(python), str(wheel)], check=True,
                   capture_output=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "VIRTUAL_ENV"))}
    environ["ENGINE_DATABASE_URL"] = database_url

    result = subprocess.run([str(env / "bin" / "engine"), "demo", "--months", "2023-12", "--json"],
                            cwd=elsewhere, env=environ, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr
    demo = json.loads(result.stdout)
    assert [m["status"] for m in demo["months"]] == ["verified"]
    assert demo["totals"]["verified"] == demo["totals"]["expected"] > 0
    installed = subprocess.run([str(python), "-c", "import engine; print(engine.__file__)"],
                               capture_output=True, text=True, check=True, cwd=elsewhere)
    assert str(env) in installed.stdout  # the wheel's copy ran, not this checkout
