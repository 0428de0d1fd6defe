"""Diff classes, causes and the halving formula, pure: frames in, frames out (no database)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import formula
from engine.demo import generate
from engine.formula import KEY
from engine.month import diff
from engine.months import Month
from engine.reference import REFERENCE_DIR
from engine.repairs import actions, causes, legacy
from engine.store.config import MinerModel, load_miner_models

MODELS = load_miner_models(REFERENCE_DIR / "miner_models.toml")
S9 = MinerModel("S9", 13.5, 1323)
HARD = Decimal(100000000000000)


def curtailment(rows: list[tuple[date, int, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"settlement_date": [r[0] for r in rows], "settlement_period": [r[1] for r in rows],
         "farm_id": [r[2] for r in rows], "volume": [Decimal(r[3]) for r in rows]},
        schema={"settlement_date": pl.Date, "settlement_period": pl.Int32, "farm_id": pl.String,
                "volume": pl.Decimal(38, 10)})


def difficulty(values: dict[date, Decimal]) -> pl.DataFrame:
    return pl.DataFrame({"settlement_date": list(values), "difficulty": list(values.values())},
                        schema={"settlement_date": pl.Date, "difficulty": pl.Decimal(38, 10)})


def table(expected: pl.DataFrame) -> pl.DataFrame:
    """`expected` as the calculations table would hold it: ids, exact decimals, a timestamp."""
    return expected.with_columns(
        pl.col("bitcoin_mined").cast(pl.Decimal(38, 10)),
        calculated_at=pl.lit(None, pl.Datetime("us")),
    ).with_row_index("id", offset=1).with_columns(pl.col("id").cast(pl.Int64))


@pytest.fixture(scope="module")
def two_demo_months() -> dict:
    """December 2023 and April 2024 of the demo's generator (the halving falls on 2024-04-20),
    every expected row present and right, then damaged by `legacy.damage` with its demo numbers:
    12 fallback, 10 stale, 9 per-farm, 8 linear, 7 halving and 3 unknown rows, and 5 keys
    written one row per record."""
    months = [Month(2023, 12), Month(2024, 4)]
    records = generate.curtailment(months, generate.load_farms(REFERENCE_DIR / "bmu_mapping.json"))
    real = {date.fromisoformat(d): Decimal(v) for d, v in
            json.loads((REFERENCE_DIR / "difficulty_2024.json").read_text()).items()}
    days = generate.difficulty(months, real)
    expected = formula.expected_rows(records, days, MODELS)
    damage = legacy.damage(expected, records, days, MODELS)
    return {"records": records, "difficulty": days, "expected": expected, "damage": damage}


def test_every_older_writer_is_found_as_its_own_cause(two_demo_months):
    data = two_demo_months
    found = diff.compare(data["expected"], table(data["damage"].rows),
                         formula.one_miner_btc(data["difficulty"], MODELS), data["records"])

    explained = causes.explain(found, data["records"], MODELS)

    seeded = data["damage"].counts
    assert seeded == {"fallback_difficulty": 12, "stale_difficulty": 10, "per_farm_formula": 9,
                      "linear_sql": 8, "per_record_rows": seeded["per_record_rows"],
                      "halving_reward": 7, "unknown": 3}
    assert seeded["per_record_rows"] >= 10  # 5 keys, at least two records each
    assert causes.count(explained) == seeded
    assert explained.drift.height == sum(seeded.values()) - seeded["per_record_rows"]
    assert explained.duplicates.height == seeded["per_record_rows"]
    assert (explained.missing.height, explained.orphans.height) == (0, 0)


def test_a_right_table_has_no_difference_and_no_cause(two_demo_months):
    data = two_demo_months
    found = diff.compare(data["expected"], table(data["expected"]),
                         formula.one_miner_btc(data["difficulty"], MODELS), data["records"])

    assert not found.differs
    assert causes.count(causes.explain(found, data["records"], MODELS)) == dict.fromkeys(causes.CAUSES, 0)


def test_under_the_halving_formula_v1_rows_before_the_halving_are_halving_drift(two_demo_months):
    """The table holds v1 everywhere; recomputed with `halving`, December 2023's rows (reward
    6.25) all drift with cause halving_reward, and April 2024 from the 20th on agrees."""
    data = two_demo_months
    halving = formula.expected_rows(data["records"], data["difficulty"], MODELS, "halving")
    tolerance = formula.one_miner_btc(data["difficulty"], MODELS, "halving")

    found = causes.explain(diff.compare(halving, table(data["expected"]), tolerance, data["records"]),
                           data["records"], MODELS, "halving")

    before = data["expected"].filter(pl.col("settlement_date") < formula.HALVING_DAY)
    positive = before.filter(pl.col("bitcoin_mined") > 0).height
    assert found.drift.height == positive
    assert set(found.drift["cause"]) == {"halving_reward"}
    assert found.drift["settlement_date"].max() < formula.HALVING_DAY


def test_under_the_halving_formula_per_record_rows_are_found_at_its_reward():
    """Farm A has two records (-6 and -4 MWh) and farm B one (-5) in period 1 of 2023-12-01,
    difficulty 1e14. The table holds, for A's S9 row, the per-record writer's two rows at the
    halving formula's 6.25 BTC a block (about 0.0031 and 0.0021 BTC, no floor, no rounding).
    Under `--formula halving` both copies are per_record_rows: the writer is checked with the
    version's reward, not v1's 3.125 (which would have called them unknown)."""
    day = date(2023, 12, 1)
    source = curtailment([(day, 1, "A", "-6"), (day, 1, "A", "-4"), (day, 1, "B", "-5")])
    rates = difficulty({day: HARD})
    expected = formula.expected_rows(source, rates, [S9], "halving")
    per_record = legacy.record_btc(np.array([6.0, 4.0]), float(HARD), S9.power_w, S9.hashrate_th, 6.25)
    exact = pl.Decimal(38, 18)  # as the unrounded writer stored them
    copies = pl.concat([expected.filter(pl.col("farm_id") == "A")] * 2).with_columns(
        bitcoin_mined=pl.Series([Decimal(repr(float(v))) for v in per_record]).cast(exact))
    stored = pl.concat([expected.filter(pl.col("farm_id") == "B").with_columns(
        pl.col("bitcoin_mined").cast(exact)), copies])
    tolerance = formula.one_miner_btc(rates, [S9], "halving")

    found = causes.explain(diff.compare(expected, table(stored), tolerance, source), source, [S9],
                           "halving")

    assert found.drift.height == 0
    assert found.duplicates["cause"].to_list() == ["per_record_rows", "per_record_rows"]


def test_the_halving_formula_doubles_the_reward_only_before_2024_04_20():
    """One farm, 10 MWh, difficulty 1e14, the day before and the day of the halving: 15117 S9
    miners; v1 gives 0.00267277 both days; halving gives 0.00534555 the day before (round8 of
    twice the same double, not twice the rounded v1) and 0.00267277 on the day."""
    days = [date(2024, 4, 19), date(2024, 4, 20)]
    source = curtailment([(d, 1, "A", "-10") for d in days])
    rates = difficulty(dict.fromkeys(days, HARD))

    v1 = formula.expected_rows(source, rates, [S9], "v1")["bitcoin_mined"].to_list()
    halving = formula.expected_rows(source, rates, [S9], "halving")["bitcoin_mined"].to_list()

    assert [str(v) for v in v1] == ["0.00267277", "0.00267277"]
    assert [str(v) for v in halving] == ["0.00534555", "0.00267277"]


def test_an_unknown_formula_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown formula 'v2'; known: v1, halving"):
        formula.expected_rows(curtailment([]), difficulty({}), MODELS, "v2")


def test_a_farm_share_of_one_miner_is_drift_but_a_float_order_flip_is_not():
    """Period 1 pools farm A (1 MWh) and farm B (9 MWh). One S9 miner earns 1.768e-7 BTC a
    period at difficulty 1e14; A's share of it is 1.77e-8, so A's tolerance is 3.77e-8 (its
    share plus two rounding units). A row off by 3e-8 is not drift; off by 5e-8 it is (a
    whole miner's tolerance, 1.77e-7, would have hidden it)."""
    source = curtailment([(date(2023, 12, 1), 1, "A", "-1"), (date(2023, 12, 1), 1, "B", "-9")])
    rates = difficulty({date(2023, 12, 1): HARD})
    expected = formula.expected_rows(source, rates, [S9])
    tolerance = formula.one_miner_btc(rates, [S9])
    a = pl.col("farm_id") == "A"

    def compare(offset: str) -> diff.Diff:
        off = expected.with_columns(
            bitcoin_mined=pl.when(a).then(pl.col("bitcoin_mined") + Decimal(offset))
            .otherwise(pl.col("bitcoin_mined")))
        return diff.compare(expected, table(off), tolerance, source)

    assert compare("0.00000003").drift.height == 0
    assert compare("0.00000005").drift.height == 1


# --- properties ---------------------------------------------------------------------------------

source_rows = st.lists(
    st.tuples(st.integers(1, 3), st.integers(1, 4), st.sampled_from(["A", "B", "C"]),
              st.integers(-20_000, 500).map(lambda units: str(Decimal(units).scaleb(-3)))),
    min_size=1, max_size=25)


def _month(rows: list[tuple[int, int, str, str]]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    days = {date(2023, 12, d): Decimal(60_000_000_000_000 + d * 1_000_000_000) for d in (1, 2, 3)}
    source = curtailment([(date(2023, 12, d), p, f, v) for d, p, f, v in rows])
    rates = difficulty(days)
    return source, rates, formula.expected_rows(source, rates, MODELS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=source_rows, seed=st.integers(0, 2**16))
def test_every_existing_row_is_in_exactly_one_class_and_fixing_all_leaves_nothing(rows, seed):
    source, rates, expected = _month(rows)
    if expected.is_empty():
        return
    rng = np.random.default_rng(seed)
    existing = table(expected)
    keep = rng.random(existing.height) > 0.3
    twice = rng.random(existing.height) < 0.2
    wrong = rng.random(existing.height) < 0.2
    damaged = pl.concat([
        existing.filter(pl.Series(keep)),
        existing.filter(pl.Series(keep & twice)).with_columns(pl.col("id") + 10_000),
    ]).with_columns(bitcoin_mined=pl.when(pl.Series(np.concatenate([wrong[keep], wrong[keep & twice]])))
                    .then(pl.col("bitcoin_mined") + Decimal("0.001")).otherwise(pl.col("bitcoin_mined")))
    orphan = existing.head(1).with_columns(pl.lit(9).cast(pl.Int32).alias("settlement_period"),
                                           pl.lit(99_999, pl.Int64).alias("id"))
    damaged = pl.concat([damaged, orphan])
    tolerance = formula.one_miner_btc(rates, MODELS)

    found = diff.compare(expected, damaged, tolerance, source)

    right = damaged.height - found.drift.height - found.orphans.height - found.duplicates.height
    assert right >= 0
    assert found.present + found.missing.height == expected.height
    ids = [*found.drift["id"], *found.orphans["id"], *found.duplicates["id"]]
    assert len(ids) == len(set(ids))  # no row in two classes
    assert found.orphans.height == 1
    assert (found.duplicates.group_by(KEY).agg(pl.col("keep").sum())["keep"] == 1).all()

    fixed = _apply_in_memory(damaged, expected, found, actions.plan_actions(found, frozenset(actions.FIXES)))
    assert not diff.compare(expected, fixed, tolerance, source).differs


def _apply_in_memory(table_rows: pl.DataFrame, expected: pl.DataFrame, found: diff.Diff,
                     actions: pl.DataFrame) -> pl.DataFrame:
    """What the repair statements do, on a frame: update and delete by id, insert the missing."""
    deleted = actions.filter(pl.col("action") == "delete")["id"]
    updates = actions.filter(pl.col("action") == "update").select(
        "id", new_bitcoin="bitcoin_mined", new_difficulty="difficulty")
    rows = table_rows.filter(~pl.col("id").is_in(deleted.implode())).join(updates, on="id", how="left")
    rows = rows.with_columns(
        bitcoin_mined=pl.coalesce(pl.col("new_bitcoin").cast(pl.Decimal(38, 10)), "bitcoin_mined"),
        difficulty=pl.coalesce("new_difficulty", "difficulty"),
    ).drop("new_bitcoin", "new_difficulty")
    inserted = table(found.missing).with_columns(pl.col("id") + 50_000)
    return pl.concat([rows, inserted.select(rows.columns)])


@settings(max_examples=40, deadline=None)
@given(rows=source_rows)
def test_farm_shares_never_exceed_their_period(rows):
    source, _rates, expected = _month(rows)
    shares = diff.farm_shares(source, expected.select(KEY))
    assert ((shares["share"] > 0) & (shares["share"] <= 1)).all()
    period = shares.group_by("settlement_date", "settlement_period").agg(pl.col("share").sum())
    assert ((period["share"] - 1).abs() < 1e-9).all()
