"""Formula v1: hand-worked examples, toFixed(8) ties, and properties against the scalar reference.

Pure tests, no database. `tests.reference.v1_reference` is the plain float64 scalar code
DESIGN.md describes; the vectorised `expected_rows` must agree with it on every row.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import date
from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import MissingDifficulty, SourceDataError
from engine.formula import EXPECTED_SCHEMA, KEY, expected_rows, one_miner_btc, round8_units
from engine.months import periods_in_day
from engine.reference import REFERENCE_DIR
from engine.store.config import load_miner_models
from tests.reference import to_fixed_8, v1_reference

MODELS = load_miner_models(REFERENCE_DIR / "miner_models.toml")
S19J_PRO = next(model for model in MODELS if model.name == "S19J_PRO")
DAY = date(2023, 12, 1)
SPRING, AUTUMN = date(2023, 3, 26), date(2023, 10, 29)  # 46 and 50 settlement periods
PROPERTIES = settings(max_examples=40, deadline=None)


def curtailment(*records: tuple[date, int, str, str | None]) -> pl.DataFrame:
    """A curtailment frame from (date, period, farm, volume) tuples; volumes are decimal text."""
    return pl.DataFrame(
        {
            "settlement_date": [r[0] for r in records],
            "settlement_period": [r[1] for r in records],
            "farm_id": [r[2] for r in records],
            "volume": [None if r[3] is None else Decimal(r[3]) for r in records],
        },
        schema={"settlement_date": pl.Date, "settlement_period": pl.Int32,
                "farm_id": pl.String, "volume": pl.Decimal(38, 10)},
    )


def difficulty(values: dict[date, str | Decimal]) -> pl.DataFrame:
    return pl.DataFrame(
        {"settlement_date": list(values), "difficulty": [Decimal(v) for v in values.values()]},
        schema={"settlement_date": pl.Date, "difficulty": pl.Decimal(38, 10)},
    )


def bitcoin(rows: pl.DataFrame) -> dict[tuple[date, int, str, str], str]:
    """Each row's bitcoin_mined as the 8-decimal text production stores, by key."""
    return {(d, p, f, m): f"{btc:.8f}" for d, p, f, m, btc, _ in rows.iter_rows()}


def exact_units(x: float) -> int:
    """toFixed(8) as integer units, from the double's exact value: ties away from zero."""
    return int(to_fixed_8(x).scaleb(8))


def is_exact_tie(x: float) -> bool:
    return abs(Decimal(x).scaleb(8)) % 1 == Decimal("0.5")


AT_1E14 = difficulty({DAY: "100000000000000"})


@pytest.fixture
def one_farm_ten_mwh() -> pl.DataFrame:
    """Farm T1 curtails 10 MWh in period 1 of 2023-12-01 (difficulty 1e14 in AT_1E14).

    By hand, network_TH = 1e14 * 2**32 / 600 / 1e12 = 715 827 882.67 and per model:
    S19J_PRO floor(10 000 / (3.05 * 0.5)) = floor(6557.38) = 6557 miners,
             6557 * 100 / 715 827 882.67 * 3.125 * 3 = 0.0085875217 -> 0.00858752
    S9       floor(10 000 / 0.6615) = 15117 miners -> 0.0026727728 -> 0.00267277
    M20S     floor(10 000 / 1.68) = 5952 miners    -> 0.0053007156 -> 0.00530072
    """
    return curtailment((DAY, 1, "T1", "-10"))


def test_one_farm_gets_the_whole_period_as_worked_by_hand(one_farm_ten_mwh: pl.DataFrame) -> None:
    assert bitcoin(expected_rows(one_farm_ten_mwh, AT_1E14, MODELS)) == {
        (DAY, 1, "T1", "M20S"): "0.00530072",
        (DAY, 1, "T1", "S19J_PRO"): "0.00858752",
        (DAY, 1, "T1", "S9"): "0.00267277",
    }


def test_farms_pool_their_period_before_the_floor() -> None:
    """T1 curtails 6 MWh and T2 4 MWh in one period: the period has 10 MWh, 6557 miners and
    0.00858752 BTC (as above). T1 gets round8(0.00858752 * 6 / 10) = round8(0.005152512) =
    0.00515251, T2 round8(0.003435008) = 0.00343501. Computed apart they would have had
    3934 + 2622 = 6556 miners: pooling first is what v1 does."""
    rows = expected_rows(curtailment((DAY, 1, "T1", "-6"), (DAY, 1, "T2", "-4")), AT_1E14, [S19J_PRO])
    assert bitcoin(rows) == {(DAY, 1, "T1", "S19J_PRO"): "0.00515251",
                             (DAY, 1, "T2", "S19J_PRO"): "0.00343501"}


def test_records_of_one_farm_in_one_period_add_their_absolute_volumes(
    one_farm_ten_mwh: pl.DataFrame,
) -> None:
    """-6 and +4 MWh are 10 MWh of curtailment, not 2: the same answer as one record of 10."""
    split = curtailment((DAY, 1, "T1", "-6"), (DAY, 1, "T1", "4"))
    assert expected_rows(split, AT_1E14, MODELS).equals(expected_rows(one_farm_ten_mwh, AT_1E14, MODELS))


def test_a_farm_whose_volumes_sum_to_zero_gets_no_row() -> None:
    """T0 has two records of 0 MWh next to T1's 10 MWh: only T1 qualifies, and gets it all."""
    rows = expected_rows(
        curtailment((DAY, 1, "T0", "0"), (DAY, 1, "T0", "-0.0"), (DAY, 1, "T1", "-10")), AT_1E14, MODELS
    )
    assert set(rows["farm_id"]) == {"T1"}
    assert bitcoin(rows)[(DAY, 1, "T1", "S19J_PRO")] == "0.00858752"


def test_rows_have_the_expected_schema_and_are_sorted_by_key() -> None:
    source = curtailment((DAY, 3, "T2", "-1"), (DAY, 1, "T9", "-2"), (DAY, 1, "T1", "-3"))
    rows = expected_rows(source, AT_1E14, MODELS)
    assert rows.schema == EXPECTED_SCHEMA
    assert rows.equals(rows.sort(KEY))
    assert rows.height == 3 * len(MODELS)
    assert set(rows["difficulty"]) == {Decimal("100000000000000")}
    assert expected_rows(curtailment(), AT_1E14, MODELS).schema == EXPECTED_SCHEMA


# --- toFixed(8): the exact binary value of the double decides ---------------------------------

def test_an_exact_tie_goes_away_from_zero_unlike_python_format() -> None:
    """0.001953125 is 1/512: the double holds it exactly, so it is a true tie. toFixed(8) gives
    0.00195313; Python's format(x, '.8f') rounds ties to even and gives 0.00195312."""
    x = 0.001953125
    assert Decimal(x) == Decimal("0.001953125") and is_exact_tie(x)
    assert round8_units(np.array([x, -x])).tolist() == [195313, -195313]
    assert format(x, ".8f") == "0.00195312"


def test_equal_split_ties_follow_the_bits_of_the_double() -> None:
    """Two farms with equal volumes split an odd number of units: each share ends in 5 at the
    9th decimal in decimal arithmetic, but the double's bits decide. At difficulty 1e14:
    3 + 3 MWh: period 0.00515225, share 0.0025761249999999998... -> 0.00257612
               (a decimal cast, 0.002576125 half-up, would say 0.00257613)
    7 + 7 MWh: period 0.01202279, share 0.0060113950000000001... -> 0.00601140
    """
    source = curtailment((DAY, 1, "A", "3"), (DAY, 1, "B", "3"), (DAY, 2, "A", "7"), (DAY, 2, "B", "7"))
    shares = bitcoin(expected_rows(source, AT_1E14, [S19J_PRO]))
    assert Decimal(0.00515225 * 3 / 6) < Decimal("0.002576125")
    assert Decimal(0.01202279 * 7 / 14) > Decimal("0.006011395")
    assert shares == {(DAY, 1, "A", "S19J_PRO"): "0.00257612", (DAY, 1, "B", "S19J_PRO"): "0.00257612",
                      (DAY, 2, "A", "S19J_PRO"): "0.00601140", (DAY, 2, "B", "S19J_PRO"): "0.00601140"}


def test_an_exact_tie_in_a_farm_share_follows_tofixed_in_engine_and_reference() -> None:
    """At difficulty 43 968 111 276 624, 10 MWh (6557 miners) make exactly 0.01953125 = 5/256
    BTC; two farms of 5 MWh each get 5/512 = 0.009765625, a true tie: 0.00976563 (toFixed),
    where format(x, '.8f') would say 0.00976562."""
    day_difficulty = difficulty({DAY: "43968111276624"})
    shares = bitcoin(expected_rows(curtailment((DAY, 1, "A", "-5"), (DAY, 1, "B", "-5")),
                                   day_difficulty, [S19J_PRO]))
    assert v1_reference(10.0, 10.0, 43968111276624.0, S19J_PRO) == "0.01953125"
    assert v1_reference(10.0, 5.0, 43968111276624.0, S19J_PRO) == "0.00976563"
    assert format(0.009765625, ".8f") == "0.00976562"
    assert set(shares.values()) == {"0.00976563"}


@pytest.mark.parametrize("text", ["0.123456785", "0.100000005", "1.000000015", "-0.100000005"])
def test_a_near_tie_goes_the_way_its_exact_binary_value_says(text: str) -> None:
    x = float(text)
    assert not is_exact_tie(x)
    truth = to_fixed_8(x)  # exact, independent
    assert round8_units(np.array([x])).tolist() == [int(truth.scaleb(8))]
    assert format(x, ".8f") == f"{truth:.8f}"


# --- properties ------------------------------------------------------------------------------

FLOATS = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(min_value=0, max_value=0.1),                                   # realistic bitcoin
    st.integers(-(10**14), 10**14).map(lambda n: (n + 0.5) / 1e8),          # near-ties
    st.integers(-(2**28), 2**28).map(lambda n: (2 * n + 1) / 512),           # exact ties
)


@PROPERTIES
@given(st.lists(FLOATS, min_size=1, max_size=40))
def test_round8_units_is_the_exact_value_rounded_half_away_from_zero(xs: list[float]) -> None:
    units = round8_units(np.array(xs)).tolist()
    assert units == [exact_units(x) for x in xs]
    for x, n in zip(xs, units, strict=True):
        if not is_exact_tie(x):
            assert n == int(format(x, ".8f").replace(".", ""))


DAYS = [SPRING, date(2023, 3, 27), AUTUMN, date(2023, 10, 30), date(2024, 2, 29)]
VOLUMES = st.one_of(st.just(Decimal(0)), st.decimals(min_value=-500, max_value=500, places=5))
DIFFICULTIES = st.decimals(min_value=Decimal("2e13"), max_value=Decimal("1.2e14"), places=1)
PERIODS = st.one_of(st.sampled_from([1, 2, 46, 47, 48, 50]), st.integers(1, 50))


@st.composite
def months(draw: st.DrawFn) -> tuple[list[tuple[date, int, str, Decimal]], dict[date, Decimal]]:
    """A few days (DST days likely), a difficulty each, and records that often share a key."""
    days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=3, unique=True))
    difficulties = {d: draw(DIFFICULTIES) for d in days}
    raw = draw(st.lists(st.tuples(st.sampled_from(days), PERIODS, st.sampled_from(["A", "B", "C"]), VOLUMES),
                        min_size=1, max_size=30))
    return [(d, min(p, periods_in_day(d)), f, v) for d, p, f, v in raw], difficulties


def frames(month: tuple[list, dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    records, difficulties = month
    return curtailment(*[(d, p, f, str(v)) for d, p, f, v in records]), difficulty(difficulties)


def pooled_by_hand(records: list[tuple[date, int, str, Decimal]]) -> dict[tuple[date, int, str], tuple]:
    """(date, period, farm) -> (period_mwh, farm_mwh) as floats of exact Σ|volume|, qualifying keys only."""
    farms: dict[tuple[date, int, str], Decimal] = defaultdict(Decimal)
    for d, p, f, v in records:
        farms[(d, p, f)] += abs(v)
    periods: dict[tuple[date, int], Decimal] = defaultdict(Decimal)
    for (d, p, _), mwh in farms.items():
        periods[(d, p)] += mwh
    return {key: (float(periods[key[:2]]), float(mwh)) for key, mwh in farms.items() if mwh > 0}


@PROPERTIES
@given(months())
def test_every_row_equals_the_scalar_reference(month: tuple[list, dict]) -> None:
    records, difficulties = month
    wanted = {
        (d, p, f, model.name): v1_reference(period_mwh, farm_mwh, float(difficulties[d]), model)
        for (d, p, f), (period_mwh, farm_mwh) in pooled_by_hand(records).items()
        for model in MODELS
    }
    assert bitcoin(expected_rows(*frames(month), MODELS)) == wanted


@PROPERTIES
@given(months())
def test_the_halving_formula_before_its_day_is_the_reference_at_6_25(month: tuple[list, dict]) -> None:
    """Every day drawn is before 2024-04-20, so `halving` is v1 with 6.25 BTC a block."""
    records, difficulties = month
    wanted = {
        (d, p, f, model.name): v1_reference(period_mwh, farm_mwh, float(difficulties[d]), model, 6.25)
        for (d, p, f), (period_mwh, farm_mwh) in pooled_by_hand(records).items()
        for model in MODELS
    }
    assert bitcoin(expected_rows(*frames(month), MODELS, "halving")) == wanted


@PROPERTIES
@given(st.decimals(min_value=Decimal("0.001"), max_value=50, places=3), st.integers(2, 4), DIFFICULTIES)
def test_equal_splits_agree_with_the_reference(volume: Decimal, farms: int, value: Decimal) -> None:
    """n farms with one volume split an odd number of units: shares sit next to a tie."""
    source = curtailment(*[(DAY, 1, f"T{i}", str(-volume)) for i in range(farms)])
    shares = bitcoin(expected_rows(source, difficulty({DAY: value}), MODELS))
    assert shares == {(DAY, 1, f"T{i}", model.name): v1_reference(float(volume * farms), float(volume),
                                                                  float(value), model)
                      for i in range(farms) for model in MODELS}


@PROPERTIES
@given(months())
def test_farm_shares_never_exceed_their_period(month: tuple[list, dict]) -> None:
    records, difficulties = month
    shares: dict[tuple, list[Decimal]] = defaultdict(list)
    for d, p, _, model, btc, _ in expected_rows(*frames(month), MODELS).iter_rows():
        shares[(d, p, model)].append(btc)
    period_mwh = {key[:2]: mwh for key, (mwh, _) in pooled_by_hand(records).items()}
    by_name = {model.name: model for model in MODELS}
    for (d, p, name), btc in shares.items():
        # A farm with all of the period's volume gets all of its bitcoin: that is period_btc.
        period_btc = Decimal(v1_reference(period_mwh[(d, p)], period_mwh[(d, p)],
                                          float(difficulties[d]), by_name[name]))
        assert sum(btc) <= period_btc + len(btc) * Decimal("0.5e-8")


@PROPERTIES
@given(months())
def test_every_model_has_the_same_key_set(month: tuple[list, dict]) -> None:
    rows = expected_rows(*frames(month), MODELS)
    keys = {m.name: set(rows.filter(pl.col("miner_model") == m.name).select(KEY[:3]).rows())
            for m in MODELS}
    assert all(key_set == keys[S19J_PRO.name] for key_set in keys.values())


@PROPERTIES
@given(months(), st.randoms(use_true_random=False))
def test_the_order_of_the_source_rows_does_not_matter(month: tuple[list, dict], rnd: random.Random) -> None:
    source, day_difficulty = frames(month)
    shuffled = source.sample(fraction=1.0, shuffle=True, seed=rnd.randrange(2**32))
    once = expected_rows(source, day_difficulty, MODELS)
    assert expected_rows(shuffled, day_difficulty, MODELS).equals(once)


# --- errors ----------------------------------------------------------------------------------

def test_dates_with_curtailment_but_no_difficulty_are_named() -> None:
    """Curtailment on Dec 1, 2 and 3 but a difficulty only for Dec 2: Dec 1 and 3 are named."""
    dec = [date(2023, 12, n) for n in (1, 2, 3)]
    source = curtailment(*[(d, 1, "T1", "-1") for d in dec])
    with pytest.raises(MissingDifficulty) as error:
        expected_rows(source, difficulty({dec[1]: "1e14"}), MODELS)
    assert error.value.dates == [dec[0], dec[2]]
    assert "2023-12-01" in str(error.value) and "2023-12-03" in str(error.value)
    assert "2023-12-02" not in str(error.value)


def test_a_date_whose_curtailment_is_all_zero_needs_no_difficulty() -> None:
    rows = expected_rows(curtailment((DAY, 1, "T1", "0")), difficulty({}), MODELS)
    assert rows.height == 0


@pytest.mark.parametrize(("day", "period"), [(DAY, 0), (DAY, 49), (SPRING, 47), (AUTUMN, 51)])
def test_a_period_outside_its_day_is_a_source_error(day: date, period: int) -> None:
    source = curtailment((day, period, "T1", "-1"))
    with pytest.raises(SourceDataError, match=f"period {period}") as error:
        expected_rows(source, difficulty({day: "1e14"}), MODELS)
    assert type(error.value) is SourceDataError


def test_a_null_volume_is_a_source_error() -> None:
    with pytest.raises(SourceDataError, match="no volume"):
        expected_rows(curtailment((DAY, 1, "T1", None)), AT_1E14, MODELS)


@pytest.mark.parametrize("column", ["settlement_period", "settlement_date"])
def test_a_null_key_column_is_a_source_error(column: str) -> None:
    source = curtailment((DAY, 1, "T1", "-10")).with_columns(pl.lit(None).alias(column))
    with pytest.raises(SourceDataError):
        expected_rows(source, AT_1E14, MODELS)


def test_period_50_of_the_autumn_clock_change_is_fine() -> None:
    rows = expected_rows(curtailment((AUTUMN, 50, "T1", "-10")), difficulty({AUTUMN: "1e14"}), MODELS)
    assert rows["settlement_period"].to_list() == [50] * len(MODELS)
    assert bitcoin(rows)[(AUTUMN, 50, "T1", "S19J_PRO")] == "0.00858752"


# --- one miner -------------------------------------------------------------------------------

def test_one_miner_earns_its_share_of_the_network_per_period() -> None:
    """hashrate / network_TH * 3.125 BTC * 3 blocks; about 1.2e-6 to 1.9e-6 BTC for an S19J_PRO
    at 2024's difficulties (7.0e13 to 1.1e14)."""
    values = json.loads((REFERENCE_DIR / "difficulty_2024.json").read_text())
    year = difficulty({date.fromisoformat(d): v for d, v in values.items()})
    tolerance = one_miner_btc(year, MODELS)
    assert tolerance.height == year.height * len(MODELS)
    s19 = tolerance.filter(pl.col("miner_model") == "S19J_PRO").sort("settlement_date")
    network_th = [float(v) * 2**32 / 600 / 1e12 for _, v in sorted(values.items())]
    per_day: list[float] = s19["tolerance"].to_list()
    assert per_day == [100.0 / n * 3.125 * 3 for n in network_th]
    assert 1e-6 < min(per_day) < max(per_day) < 2e-6
