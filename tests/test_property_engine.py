"""Property: after every run of the engine on a random small month (and every rerun), the
calculations table equals an independent, straightforward recomputation in plain Python.

The recomputation below shares no code with the engine: Decimal sums of |volume|, then
`tests.reference.v1_reference` (formula v1 step by step in float64 as DESIGN.md gives it,
`toFixed(8)` as the double's exact value rounded half up), row by row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from engine.month.reconcile import reconcile_month
from engine.month.session import open_session
from engine.months import Month, periods_in_day
from tests.conftest import execute, insert_curtailment, insert_difficulty
from tests.reference import v1_reference

Key = tuple[date, int, str, str]

class Spec(NamedTuple):
    hashrate_th: float
    power_w: float


#: The default miner models as DESIGN.md states them: name → (TH/s, W).
MODELS = {"S19J_PRO": Spec(100.0, 3050.0), "S9": Spec(13.5, 1323.0), "M20S": Spec(68.0, 3360.0)}


def recompute(records: Iterable[tuple[date, int, str, str]],
              difficulty: Mapping[date, str]) -> dict[Key, Decimal]:
    """Every row formula v1 implies for `records` (date, period, farm, volume text), one by
    one: {(date, period, farm, model): bitcoin}."""
    farm_mwh: dict[tuple[date, int, str], Decimal] = defaultdict(Decimal)
    for day, period, farm, volume in records:
        farm_mwh[(day, period, farm)] += abs(Decimal(volume))
    period_mwh: dict[tuple[date, int], Decimal] = defaultdict(Decimal)
    for (day, period, _farm), mwh in farm_mwh.items():
        if mwh > 0:
            period_mwh[(day, period)] += mwh
    rows = {}
    for (day, period, farm), mwh in farm_mwh.items():
        if mwh <= 0:
            continue
        total = float(period_mwh[(day, period)])
        day_difficulty = float(Decimal(difficulty[day]))
        for model, spec in MODELS.items():
            rows[(day, period, farm, model)] = Decimal(v1_reference(total, float(mwh), day_difficulty, spec))
    return rows


def table(url: str) -> list[tuple[Key, Decimal, Decimal]]:
    """The calculations table as (key, bitcoin, difficulty), every row."""
    return [((r[0], r[1], r[2], r[3]), Decimal(r[4]), Decimal(r[5])) for r in execute(url, """
        SELECT settlement_date, settlement_period, farm_id, miner_model, bitcoin_mined::text,
               difficulty::text FROM historical_bitcoin_calculations""")]


def insert_calculations(url: str, rows: Iterable[tuple[Key, Decimal | str, str]]) -> None:
    for (day, period, farm, model), bitcoin, difficulty in rows:
        execute(url, """INSERT INTO historical_bitcoin_calculations (settlement_date,
            settlement_period, farm_id, miner_model, bitcoin_mined, difficulty)
            VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric)""",
                (day, period, farm, model, str(bitcoin), difficulty))


def assert_table_is(url: str, want: Mapping[Key, Decimal], difficulty: Mapping[date, str],
                    orphans: Mapping[Key, Decimal]) -> None:
    rows = table(url)
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys)), "a key is present twice"
    assert {key: bitcoin for key, bitcoin, _ in rows} == {**want, **orphans}
    assert all(d == Decimal(difficulty[key[0]]) for key, _, d in rows if key not in orphans)


# --- strategies ------------------------------------------------------------------------------

#: Clock-change months (a 46- or a 50-period day) and an ordinary one.
MONTHS = (Month(2023, 3), Month(2023, 10), Month(2024, 3), Month(2024, 10), Month(2023, 12))
FARMS = ("A", "B b", "O'Brien \"Wind\"", "Ünïcødé ☃", "T_1-WIND")
# Round volumes make equal splits and ties; the others are production-like (3 decimals).
VOLUMES = st.one_of(
    st.sampled_from(["-10", "-5", "-2.5", "-1", "-20", "-3.333", "0", "4", "-0.001"]),
    st.integers(-400_000, 20_000).map(lambda units: str(Decimal(units).scaleb(-3))),
)
DIFFICULTIES = st.one_of(
    st.sampled_from(["100000000000000", "67305906902031.39", "35364065900457.12"]),
    st.integers(10**13, 2 * 10**14).map(str),
)


@st.composite
def small_months(draw: Callable[[st.SearchStrategy[Any]], Any]) -> dict[str, Any]:
    month = draw(st.sampled_from(MONTHS))
    days = draw(st.lists(st.sampled_from(month.days()), min_size=1, max_size=3, unique=True))
    clock_change = [d for d in month.days() if periods_in_day(d) != 48]
    if clock_change and draw(st.booleans()):
        days = sorted({*days, clock_change[0]})
    records = []
    for day in days:
        last = periods_in_day(day)
        periods = st.one_of(st.integers(1, last), st.sampled_from([1, last]))
        for period, farm in draw(st.lists(st.tuples(periods, st.sampled_from(FARMS)),
                                          min_size=1, max_size=6)):
            records += [(day, period, farm, v) for v in draw(st.lists(VOLUMES, min_size=1, max_size=3))]
    difficulty = {day: draw(DIFFICULTIES) for day in days}
    want = recompute(records, difficulty)
    keys = sorted(want)
    present = [k for k, keep in zip(keys, draw(st.lists(st.booleans(), min_size=len(keys),
                                                        max_size=len(keys))), strict=True) if keep]
    # Orphans: a farm with no record that day; a different model name is an orphan too.
    orphans = {(days[0], 7, "NO SOURCE", "S9"): Decimal("0.00000123")} if draw(st.booleans()) else {}
    if keys and draw(st.booleans()):
        day, period, farm, _ = keys[0]
        orphans[(day, period, farm, "UNKNOWN_MODEL")] = Decimal("0.5")
    removed = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)) if keys else []
    return {"month": month, "records": records, "difficulty": difficulty, "want": want,
            "present": present, "orphans": orphans, "removed": removed}


@hypothesis_settings(max_examples=15, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=small_months())
def test_the_table_equals_a_row_by_row_recomputation_after_every_run(case, settings, database_url):
    """A random small month: 1-3 days (often a clock-change day), up to 6 (period, farm) pairs
    a day with 1-3 records each (zero and positive volumes among them), some of the expected
    rows already present, maybe an orphan or a row of an unknown model. Right answer: the
    recomputation plus the orphans, after the first run, after a rerun, and after a rerun
    that follows deleting some rows."""
    url, month, want, difficulty, orphans = (database_url, case["month"], case["want"],
                                             case["difficulty"], case["orphans"])
    execute(url, """TRUNCATE curtailment_records, historical_bitcoin_calculations,
                    bitcoin_difficulty, reconciliation_progress, reconciliation_runs""")
    insert_curtailment(url, [(d.isoformat(), p, f, v) for d, p, f, v in case["records"]])
    insert_difficulty(url, {d.isoformat(): v for d, v in difficulty.items()})
    insert_calculations(url, [(k, want[k], difficulty[k[0]]) for k in case["present"]])
    insert_calculations(url, [(k, b, "1") for k, b in orphans.items()])

    with open_session(settings) as session:
        first = reconcile_month(session, month)
        assert first.status == "verified", first.to_dict()
        assert first.rows["inserted"] == len(want) - len(case["present"])
        assert_table_is(url, want, difficulty, orphans)

        again = reconcile_month(session, month)
        assert again.status == "verified" and again.rows["inserted"] == 0
        assert_table_is(url, want, difficulty, orphans)

        for day, period, farm, model in case["removed"]:
            execute(url, """DELETE FROM historical_bitcoin_calculations WHERE settlement_date = $1
                            AND settlement_period = $2 AND farm_id = $3 AND miner_model = $4""",
                    (day, period, farm, model))
        third = reconcile_month(session, month)
        assert third.status == "verified" and third.rows["inserted"] == len(case["removed"])
        assert_table_is(url, want, difficulty, orphans)
