"""Repairs (`--fix`), causes on the run record, `engine diff`, and the demo's damage found in
its exact numbers, against a real PostgreSQL."""

from __future__ import annotations

import json
import os
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from engine import formula
from engine.demo import generate
from engine.errors import InputError, RepairConflict, SchemaError
from engine.month.reconcile import MonthResult, reconcile_month
from engine.month.session import open_session
from engine.months import Month
from engine.operations.review import diff_month, diff_months
from engine.reference import REFERENCE_DIR
from engine.repairs import legacy
from engine.store import db, schema
from engine.store.config import Settings, load_miner_models
from tests.conftest import calculations, execute
from tests.test_cli import engine
from tests.test_pipeline import DECEMBER, seed_december

GOLDEN = Path(__file__).parent / "golden"
CALCS = "historical_bitcoin_calculations"
INSERT = f"""INSERT INTO {CALCS} (settlement_date, settlement_period, farm_id, miner_model,
             bitcoin_mined, difficulty, calculated_at) VALUES ($1::date, $2, $3, $4, $5::numeric,
             $6::numeric, $7::timestamp)"""


def seed_damaged_december(url: str, settings: Settings) -> None:
    """`seed_december` reconciled (9 right rows), then damaged as production's writers did:
    - drift: 2023-12-02 p48 C S9 holds 0.00086534 at the fallback difficulty 108105433845147
      (the right row: 0.00138989 at 67305906902031.39) → cause fallback_difficulty;
    - duplicates: 2023-12-01 p1 A M20S (right: 0.00530072) replaced by the per-record writer's
      two rows, one per record of A (-6 and -4 MWh): 0.00318063289991447 (written 2023-12-05)
      and 0.002120421933276313 (2023-12-06, the newest, kept by a repair) → per_record_rows ×2;
    - orphan: 2023-12-01 p2 A S9 (A's volume there is 0) → no cause.
    The unique key index is dropped (duplicates cannot exist with it)."""
    seed_december(url)
    reconcile(settings)
    execute(url, "DROP INDEX historical_bitcoin_calculations_key")
    execute(url, f"""UPDATE {CALCS} SET bitcoin_mined = 0.00086534, difficulty = 108105433845147
                     WHERE farm_id = 'C' AND miner_model = 'S9'""")
    execute(url, f"DELETE FROM {CALCS} WHERE farm_id = 'A' AND miner_model = 'M20S'")
    execute(url, INSERT, ("2023-12-01", 1, "A", "M20S", "0.00318063289991447", "100000000000000",
                          "2023-12-05 10:00:00"))
    execute(url, INSERT, ("2023-12-01", 1, "A", "M20S", "0.002120421933276313", "100000000000000",
                          "2023-12-06 10:00:00"))
    execute(url, INSERT, ("2023-12-01", 2, "A", "S9", "0.5", "100000000000000", "2023-12-07 10:00:00"))


def reconcile(settings: Settings, month: Month = DECEMBER, **options) -> MonthResult:
    with open_session(settings) as session:
        return reconcile_month(session, month, **options)


def run_row(url: str, run_id: int) -> dict:
    row = execute(url, """SELECT formula, arguments::text, rows::text, causes::text, repairs::text
                          FROM reconciliation_runs WHERE id = $1""", (run_id,))[0]
    return {"formula": row[0], **{k: json.loads(v) if v else None
                                  for k, v in zip(("arguments", "rows", "causes", "repairs"), row[1:],
                                                  strict=True)}}


def test_month_without_fix_reports_classes_and_causes_and_changes_no_existing_row(settings, database_url):
    seed_damaged_december(database_url, settings)
    before = calculations(database_url)

    result = reconcile(settings)

    assert result.status == "verified"
    assert (result.rows["drift"], result.rows["duplicates"], result.rows["orphans"]) == (1, 2, 1)
    assert (result.rows["inserted"], result.rows["updated"], result.rows["deleted"]) == (0, 0, 0)
    assert calculations(database_url) == before
    recorded = run_row(database_url, result.run_id)
    assert recorded["causes"]["fallback_difficulty"] == 1
    assert recorded["causes"]["per_record_rows"] == 2
    assert recorded["rows"]["drift"] == 1 and recorded["arguments"]["fix"] == []


def test_fix_all_repairs_every_class_in_one_run_and_the_month_is_then_exact(settings, database_url):
    seed_damaged_december(database_url, settings)

    result = reconcile(settings, fix=["all"])

    assert result.status == "verified", result.verdict
    assert result.repairs == {"updated": {"drift": 1, "duplicates": 1},
                              "deleted": {"duplicates": 1, "orphans": 1}}
    rows = {(r[0], r[1], r[2], r[3]): (r[4], r[5]) for r in calculations(database_url)}
    assert len(calculations(database_url)) == 9 == len(rows)
    assert rows[(date(2023, 12, 2), 48, "C", "S9")] == ("0.00138989", "67305906902031.39")
    assert rows[(date(2023, 12, 1), 1, "A", "M20S")] == ("0.00530072", "100000000000000")
    with open_session(settings) as session:
        after = diff_month(session, DECEMBER)
    assert not after.differs and after.summaries is not None and after.summaries.verified
    assert run_row(database_url, result.run_id)["repairs"]["deleted"] == {"duplicates": 1, "orphans": 1}
    assert "summaries" in [c.name for c in result.verdict.checks]


def test_fix_duplicates_alone_keeps_the_newest_copy_and_leaves_it_as_drift(settings, database_url):
    seed_damaged_december(database_url, settings)

    result = reconcile(settings, fix=["duplicates"])

    assert result.status == "verified"
    kept = execute(database_url, f"SELECT bitcoin_mined::text FROM {CALCS} WHERE farm_id = 'A' "
                                 "AND settlement_period = 1 AND miner_model = 'M20S'")
    assert kept == [("0.002120421933276313",)]
    assert result.verdict is not None
    assert result.verdict.outstanding == {"drift": 2, "orphans": 1}  # C S9 and the kept copy


def test_fix_duplicates_keeps_the_copy_matching_the_recompute_even_when_older(settings, database_url):
    """A S9 (right: 0.00267278) present twice: the right value written 2023-12-05 and a wrong
    one written later; the older, right one is kept."""
    seed_december(database_url)
    reconcile(settings)
    execute(database_url, "DROP INDEX historical_bitcoin_calculations_key")
    execute(database_url, f"UPDATE {CALCS} SET calculated_at = '2023-12-05' WHERE farm_id = 'A' "
                          "AND miner_model = 'S9' AND settlement_period = 1")
    execute(database_url, INSERT, ("2023-12-01", 1, "A", "S9", "0.1", "100000000000000",
                                   "2023-12-09 00:00:00"))

    result = reconcile(settings, fix=["duplicates"])

    assert result.rows["duplicates"] == 2 and result.rows["deleted"] == 1
    assert execute(database_url, f"SELECT bitcoin_mined::text FROM {CALCS} WHERE farm_id = 'A' "
                                 "AND miner_model = 'S9' AND settlement_period = 1") == [("0.00267278",)]


def test_a_row_deleted_by_another_writer_before_the_repair_fails_the_month_and_writes_nothing(
        settings, database_url):
    seed_damaged_december(database_url, settings)
    before = calculations(database_url)

    def another_writer(month: Month, step: str) -> None:
        if step == "load":  # after the diff, before the repair
            execute(database_url, f"DELETE FROM {CALCS} WHERE settlement_period = 2")

    with pytest.raises(RepairConflict, match="1 of the 4 row"):
        reconcile(settings, fix=["all"], on_step=another_writer)

    assert calculations(database_url) == [r for r in before if r[1] != 2]
    assert execute(database_url, "SELECT status FROM reconciliation_progress") == [("failed",)]


def test_formula_halving_is_stored_on_the_run_and_v1_rows_show_as_halving_drift(settings, database_url):
    seed_december(database_url)
    reconcile(settings)  # v1 everywhere

    result = reconcile(settings, version="halving")

    assert result.formula == "halving" and result.rows["drift"] == 9
    assert result.causes["halving_reward"] == 9
    assert run_row(database_url, result.run_id)["formula"] == "halving"


def test_a_month_with_only_orphans_is_emptied_by_fix_orphans(settings, database_url):
    """No curtailment in November, two calculation rows for it: both orphans, both deleted."""
    for farm in ("X", "Y"):
        execute(database_url, INSERT, ("2023-11-05", 3, farm, "S9", "0.1", "1", "2023-11-06 00:00:00"))

    result = reconcile(settings, Month(2023, 11), fix=["orphans"])

    assert result.status == "verified" and result.rows["orphans"] == 2 and result.rows["deleted"] == 2
    assert calculations(database_url) == []


def test_an_unknown_fix_or_formula_is_bad_input(settings, database_url):
    with pytest.raises(InputError, match="--fix takes drift, duplicates, orphans or all"):
        reconcile(settings, fix=["everything"])
    with pytest.raises(InputError, match="formula 'v3' is not one of v1, halving"):
        reconcile(settings, version="v3")


# --- engine diff ------------------------------------------------------------------------------


def test_diff_exits_1_when_anything_differs_and_0_when_the_month_is_exact(settings, database_url, tmp_path):
    seed_damaged_december(database_url, settings)

    differs = engine("diff", "2023-12", url=database_url, data_dir=tmp_path)
    engine("month", "2023-12", "--fix", "all", url=database_url, data_dir=tmp_path)
    exact = engine("diff", "2023-12", url=database_url, data_dir=tmp_path)

    assert differs.exit_code == 1, differs.output
    assert "drift 1" in differs.stdout and "fallback_difficulty 1" in differs.stdout
    assert "per_record_rows 2" in differs.stdout
    assert exact.exit_code == 0, exact.output
    assert exact.stdout.strip().endswith("exact: nothing differs")
    for kind in ("missing", "drift", "orphans", "duplicates"):
        assert (tmp_path / "diffs" / kind / "month=2023-12" / "part-0.parquet").exists()


def test_diff_json_matches_the_golden_file(settings, database_url, tmp_path):
    seed_damaged_december(database_url, settings)

    result = engine("diff", "2023-12", "--json", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    for month in payload["months"]:
        month["seconds"] = 0.0
        month["files"] = {k: Path(v).relative_to(tmp_path).as_posix() for k, v in month["files"].items()}
        for rows in month["samples"].values():
            for row in rows:
                row.pop("id", None)  # ids depend on the order of the seed's statements
    golden = GOLDEN / "diff_2023-12.json"
    if os.environ.get("ENGINE_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(payload, indent=2) + "\n")
    assert payload == json.loads(golden.read_text())


def test_diff_needs_a_month_or_a_range(database_url, tmp_path):
    result = engine("diff", url=database_url, data_dir=tmp_path)

    assert result.exit_code == 2 and "give a month (YYYY-MM) or both --from and --to" in result.stderr


# --- the demo's damage, found exactly -----------------------------------------------------------


def test_the_demo_damage_is_found_in_exactly_the_seeded_numbers(settings, database_url):
    """Two demo months (2023-12 and 2024-04) as `engine demo` builds them, with the older
    writers' damage of `legacy.DEMO_DAMAGE` on top: every class and cause is found in exactly
    the numbers seeded, and after `--fix all` every class is zero and the summaries verify."""
    months = [Month(2023, 12), Month(2024, 4)]
    models = load_miner_models(REFERENCE_DIR / "miner_models.toml")
    records = generate.curtailment(months, generate.load_farms(REFERENCE_DIR / "bmu_mapping.json"))
    real = {date.fromisoformat(d): Decimal(v) for d, v in
            json.loads((REFERENCE_DIR / "difficulty_2024.json").read_text()).items()}
    days = generate.difficulty(months, real)
    expected = formula.expected_rows(records, days, models)
    present = generate.backlog(expected)  # whole days present, 40 fallback rows, some orphans
    damage = legacy.damage(present, records, days, models)
    execute(database_url, "DROP INDEX historical_bitcoin_calculations_key")
    with db.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.adbc_ingest("curtailment_records", records.to_arrow(), mode="append")
        cursor.adbc_ingest(schema.CALCULATIONS, damage.rows.to_arrow(), mode="append")
        cursor.adbc_ingest("bitcoin_difficulty", days.to_arrow(), mode="append",
                           db_schema_name=schema.DEFAULT_SCHEMA)
        conn.commit()
    orphans = present.join(expected, on=formula.KEY, how="anti").height

    with open_session(settings) as session:
        found = diff_months(session, months)
        fixed = [reconcile_month(session, m, fix=["all"]) for m in months]
        after = diff_months(session, months)

    seeded = dict(damage.counts)
    seeded["fallback_difficulty"] += 40  # the demo's own backlog drifts 40 rows that way
    assert found.causes() == seeded
    assert found.totals()["drift"] == sum(seeded.values()) - seeded["per_record_rows"]
    assert found.totals()["duplicates"] == seeded["per_record_rows"]
    assert found.totals()["orphans"] == orphans > 0
    assert found.totals()["missing"] == expected.join(present, on=formula.KEY, how="anti").height
    assert [r.status for r in fixed] == ["verified", "verified"]
    assert after.exit_code == 0 and after.totals()["drift"] == 0 and after.summaries_differ() == 0


def test_a_database_without_the_repair_columns_is_told_to_run_db_init(settings, database_url):
    execute(database_url, "ALTER TABLE reconciliation_runs DROP COLUMN causes")

    with pytest.raises(SchemaError, match=r"reconciliation_runs lacks column\(s\) causes; run `engine "
                                          r"db init`"):
        reconcile(settings)

    schema.init_schema(database_url)
    assert reconcile(settings).status == "nothing_to_do"
