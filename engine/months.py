"""The `Month` value and the settlement calendar (46, 48 or 50 periods a day)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from engine.errors import InputError, quoted

_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
_LONDON = ZoneInfo("Europe/London")


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month, written `YYYY-MM`."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """Return the month `text` names; raise `InputError` unless it is exactly `YYYY-MM`."""
        match = _MONTH.fullmatch(text.strip())
        if match is None:
            raise InputError(f"month {quoted(text)} is not of the form YYYY-MM (for example 2023-12)")
        year, month = int(match[1]), int(match[2])
        if not 1 <= month <= 12:
            raise InputError(f"month {quoted(text)} has no month {month:02d}; months run 01 to 12")
        if not 2000 <= year <= 2100:
            raise InputError(f"month {quoted(text)} is outside the years 2000 to 2100")
        return cls(year, month)

    @classmethod
    def of(cls, day: date) -> Month:
        return cls(day.year, day.month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def next_first_day(self) -> date:
        """The first day of the following month: the exclusive upper bound of this one."""
        return date(self.year + self.month // 12, self.month % 12 + 1, 1)

    def days(self) -> list[date]:
        count = (self.next_first_day - self.first_day).days
        return [self.first_day + timedelta(days=i) for i in range(count)]

    def next(self) -> Month:
        return Month.of(self.next_first_day)

    def previous(self) -> Month:
        return Month.of(self.first_day - timedelta(days=1))


@dataclass(frozen=True, order=True)
class Days:
    """Consecutive days of one month, from `first` up to (not including) `end`: a slice."""

    first: date
    end: date

    @classmethod
    def of(cls, month: Month) -> Days:
        """The whole month."""
        return cls(month.first_day, month.next_first_day)

    @property
    def month(self) -> Month:
        return Month.of(self.first)

    @property
    def count(self) -> int:
        return (self.end - self.first).days

    def __str__(self) -> str:
        last = self.end - timedelta(days=1)
        return str(self.first) if last == self.first else f"{self.first}..{last}"


def month_range(first: Month, last: Month) -> list[Month]:
    """Every month from `first` to `last`, both included."""
    if last < first:
        raise InputError(f"the range {first}..{last} runs backwards")
    months = [first]
    while months[-1] < last:
        months.append(months[-1].next())
    return months


def periods_in_day(day: date) -> int:
    """Settlement periods in a UK day: 46 on the spring clock change, 50 on the autumn one, else 48."""
    start = datetime(day.year, day.month, day.day, tzinfo=_LONDON)
    end = start + timedelta(days=1)
    # Wall-clock arithmetic ignores DST in zoneinfo; compare the real UTC offsets instead.
    hours = 24 + (start.utcoffset() - end.replace(tzinfo=_LONDON).utcoffset()).total_seconds() / 3600  # type: ignore[operator]
    return int(hours * 2)


def parse_range(text: str) -> list[Month]:
    """`2023-12` or `2022-01..2024-12` (inclusive) as a list of months."""
    first, sep, last = text.partition("..")
    start = Month.parse(first)
    return month_range(start, Month.parse(last)) if sep else [start]
