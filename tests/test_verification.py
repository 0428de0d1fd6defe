"""What "verified" proves: every row the run wrote is in the table exactly as it computed it,
and every other row exactly as it was. Each way a row can go wrong on its way in fails the
month (exit 1), names the key with got and want, and leaves its progress not completed.

The December of test_faults: 72 expected rows, 12 present, 60 inserted by the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import execute
from tests.test_faults import CALCULATIONS, run_engine, seed_december

# A key the run inserts: the 2nd of December, period 48, farm C, model S9.
KEY = ("2023-12-02", 48, "C", "S9")
ON_KEY = (f"NEW.settlement_date = '{KEY[0]}' AND NEW.settlement_period = {KEY[1]} "
          f"AND NEW.farm_id = '{KEY[2]}' AND NEW.miner_model = '{KEY[3]}'")
SHOWN = f"{KEY[0]} p{KEY[1]} {KEY[2]} {KEY[3]}"


def trigger(body: str) -> list[str]:
    return [f"""CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF {ON_KEY} THEN {body} END IF; RETURN NEW; END $$""",
            f"""CREATE TRIGGER tamper BEFORE INSERT ON {CALCULATIONS}
                FOR EACH ROW EXECUTE FUNCTION tamper()"""]


TAMPERING = {
    "a trigger adds 1e-8": trigger("NEW.bitcoin_mined := NEW.bitcoin_mined + 0.00000001;"),
    "a trigger adds 1e-5": trigger("NEW.bitcoin_mined := NEW.bitcoin_mined + 0.00001;"),
    "a trigger changes the difficulty": trigger("NEW.difficulty := NEW.difficulty + 1;"),
    "a trigger drops the row": trigger("RETURN NULL;"),
    "a column of scale 6": [f"ALTER TABLE {CALCULATIONS} ALTER COLUMN bitcoin_mined TYPE numeric(14, 6)"],
    "a rule drops the row": [f"""CREATE RULE tamper AS ON INSERT TO {CALCULATIONS}
                                 WHERE {ON_KEY} DO INSTEAD NOTHING"""],
}


def month_status(url: str) -> str:
    return execute(url, "SELECT status FROM reconciliation_progress WHERE month = '2023-12'")[0][0]


@pytest.mark.parametrize("statements", TAMPERING.values(), ids=TAMPERING.keys())
def test_a_row_changed_on_its_way_in_fails_the_month_and_is_named(
        database_url: str, tmp_path: Path, statements: list[str]) -> None:
    seed_december(database_url)
    for statement in statements:
        execute(database_url, statement)

    result = run_engine(database_url, tmp_path, "month", "2023-12", "--json")

    assert result.returncode == 1, result.stderr
    verdict = json.loads(result.stdout)["verdict"]
    failed = {c["name"]: c["detail"] for c in verdict["checks"] if not c["passed"]}
    assert "rows_exact" in failed
    assert SHOWN in failed["rows_exact"] or "numeric(14, 6)" in " ".join(statements)
    assert month_status(database_url) == "failed"


def test_a_column_of_lower_scale_names_a_rounded_row_with_got_and_want(
        database_url: str, tmp_path: Path) -> None:
    seed_december(database_url)
    execute(database_url, TAMPERING["a column of scale 6"][0])

    result = run_engine(database_url, tmp_path, "month", "2023-12", "--json")

    detail = next(c["detail"] for c in json.loads(result.stdout)["verdict"]["checks"]
                  if c["name"] == "rows_exact")
    assert " got " in detail and " want " in detail
    got, want = detail.split("first: ")[1].split(";")[0].split(" got ")[1].split(" want ")
    assert got.split(" BTC")[0] != want.split(" BTC")[0]


def test_the_same_month_without_tampering_verifies_every_row(
        database_url: str, tmp_path: Path) -> None:
    seed_december(database_url)

    result = run_engine(database_url, tmp_path, "month", "2023-12", "--json")

    assert result.returncode == 0, result.stderr
    checks = json.loads(result.stdout)["verdict"]["checks"]
    assert {c["name"]: c["passed"] for c in checks}["rows_exact"] is True
    assert month_status(database_url) == "completed"
