"""The `Month` value and the settlement calendar: 46 periods on the spring clock change, 50 on
the autumn one, 48 on every other day. Pure tests, no database."""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from engine.months import Month, month_range, parse_range, periods_in_day

# UK clocks change on the last Sunday of March (a 23-hour day) and of October (25 hours).
SPRING = {2022: date(2022, 3, 27), 2023: date(2023, 3, 26), 2024: date(2024, 3, 31)}
AUTUMN = {2022: date(2022, 10, 30), 2023: date(2023, 10, 29), 2024: date(2024, 10, 27)}
MONTHS = st.builds(Month, st.integers(2000, 2099), st.integers(1, 12))


def last_sunday(year: int, month: int) -> date:
    """The last Sunday of a month, from the calendar alone (no time zones)."""
    day = Month(year, month).next_first_day - timedelta(days=1)
    return day - timedelta(days=(day.weekday() - 6) % 7)


# --- parsing ---------------------------------------------------------------------------------

def test_a_month_is_parsed_from_year_dash_month() -> None:
    month = Month.parse("2023-12")
    assert month == Month(2023, 12)
    assert str(month) == "2023-12"


@pytest.mark.parametrize(
    "text",
    ["2023-13", "2023-00", "23-12", "2023/12", "2023-1", "", " 2023-12x", "2023-12'; drop table x; --",
     "1999-12", "2023-12-01"],
)
def test_anything_but_year_dash_month_is_an_input_error_naming_the_input(text: str) -> None:
    with pytest.raises(InputError) as error:
        Month.parse(text)
    assert repr(text) in str(error.value)


@pytest.mark.parametrize("text", ["２０２３-１２", "٢٠٢٣-١٢"])
def test_only_ascii_digits_make_a_month(text: str) -> None:
    with pytest.raises(InputError):
        Month.parse(text)


@given(MONTHS)
def test_a_month_parses_back_from_its_text(month: Month) -> None:
    assert Month.parse(str(month)) == month


# --- the settlement calendar -----------------------------------------------------------------

@pytest.mark.parametrize("year", [2022, 2023, 2024])
def test_clock_change_days_have_46_and_50_periods(year: int) -> None:
    assert SPRING[year] == last_sunday(year, 3)
    assert AUTUMN[year] == last_sunday(year, 10)
    assert periods_in_day(SPRING[year]) == 46
    assert periods_in_day(AUTUMN[year]) == 50
    for neighbour in (-1, 1, 7):
        assert periods_in_day(SPRING[year] + timedelta(days=neighbour)) == 48
        assert periods_in_day(AUTUMN[year] + timedelta(days=neighbour)) == 48


def test_over_2022_to_2024_exactly_three_days_have_46_periods_and_three_have_50() -> None:
    first, last = date(2022, 1, 1), date(2024, 12, 31)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    by_count: dict[int, list[date]] = {}
    for day in days:
        by_count.setdefault(periods_in_day(day), []).append(day)
    assert by_count[46] == sorted(SPRING.values())
    assert by_count[50] == sorted(AUTUMN.values())
    assert len(by_count[48]) == len(days) - 6 == 1090
    assert set(by_count) == {46, 48, 50}


@settings(max_examples=200)
@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31)))
def test_a_day_has_46_periods_on_the_last_sunday_of_march_50_on_october_s_else_48(day: date) -> None:
    if day == last_sunday(day.year, 3):
        assert periods_in_day(day) == 46
    elif day == last_sunday(day.year, 10):
        assert periods_in_day(day) == 50
    else:
        assert periods_in_day(day) == 48


# --- days, ranges, neighbours ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("month", "length"),
    [(Month(2024, 2), 29), (Month(2023, 2), 28), (Month(2000, 2), 29), (Month(2023, 4), 30),
     (Month(2023, 12), 31), (Month(2024, 1), 31)],
)
def test_a_month_has_its_calendar_days(month: Month, length: int) -> None:
    days = month.days()
    assert len(days) == length
    assert days[0] == month.first_day
    assert days[-1] + timedelta(days=1) == month.next_first_day


@given(MONTHS)
def test_days_are_consecutive_and_all_in_their_month(month: Month) -> None:
    days = month.days()
    assert all(Month.of(day) == month for day in days)
    assert all(b - a == timedelta(days=1) for a, b in pairwise(days))
    assert Month.of(days[-1] + timedelta(days=1)) == month.next()


def test_next_and_previous_cross_year_ends() -> None:
    assert Month(2023, 12).next() == Month(2024, 1)
    assert Month(2024, 1).previous() == Month(2023, 12)
    assert Month(2023, 11).next() == Month(2023, 12)
    assert Month(2023, 2).previous() == Month(2023, 1)


@given(MONTHS)
def test_previous_undoes_next(month: Month) -> None:
    assert month.next().previous() == month
    assert month.previous().next() == month
    assert month.previous() < month < month.next()


def test_a_month_range_includes_both_ends() -> None:
    assert month_range(Month(2023, 11), Month(2024, 2)) == [
        Month(2023, 11), Month(2023, 12), Month(2024, 1), Month(2024, 2)
    ]
    assert month_range(Month(2023, 12), Month(2023, 12)) == [Month(2023, 12)]
    assert len(month_range(Month(2022, 1), Month(2024, 12))) == 36


def test_a_backwards_month_range_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"2024-02\.\.2023-11"):
        month_range(Month(2024, 2), Month(2023, 11))


def test_a_range_is_parsed_from_text() -> None:
    assert parse_range("2023-12") == [Month(2023, 12)]
    assert parse_range("2023-11..2024-01") == [Month(2023, 11), Month(2023, 12), Month(2024, 1)]
    with pytest.raises(InputError):
        parse_range("2024-01..2023-11")
    with pytest.raises(InputError, match="2023-13"):
        parse_range("2023-11..2023-13")
