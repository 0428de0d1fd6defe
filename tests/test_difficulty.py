"""Difficulty files: JSON and CSV in, clear errors for bad ones, idempotent upsert."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.reference import REFERENCE_DIR
from engine.store import db
from engine.store.difficulty import load_difficulty, read_difficulty_file
from tests.conftest import execute


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(url: str, path: Path):
    with db.connect(url) as conn:
        return load_difficulty(conn, read_difficulty_file(path), lock_timeout_ms=1000,
                               statement_timeout_ms=10000)


def test_the_shipped_2024_file_reads_as_366_dates():
    frame = read_difficulty_file(REFERENCE_DIR / "difficulty_2024.json")

    assert frame.height == 366
    assert frame.row(0) == (date(2024, 1, 1), Decimal("72006146478567"))


def test_csv_with_or_without_a_header_reads_the_same(tmp_path):
    with_header = write(tmp_path, "a.csv", "date,difficulty\n2024-01-02,5.5\n2024-01-01,7\n")
    without = write(tmp_path, "b.csv", "2024-01-01,7\n2024-01-02,5.5\n")

    assert read_difficulty_file(with_header).equals(read_difficulty_file(without))


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.json", "{not json", "not valid JSON"),
    ("list.json", "[1, 2]", "must be a JSON object"),
    ("date.json", '{"2024-13-01": "1"}', "'2024-13-01' is not a date"),
    ("zero.json", '{"2024-01-01": "0"}', "must be a positive number"),
    ("text.csv", "2024-01-01,lots\n", "must be a positive number"),
    ("nan.csv", "2024-01-01,NaN\n", "must be a positive number"),
    ("twice.csv", "2024-01-01,1\n2024-01-01,2\n", "given twice"),
    ("cols.csv", "2024-01-01,1,2\n", "should be date,difficulty"),
    ("empty.json", "{}", "holds no difficulty"),
])
def test_a_bad_file_is_refused_with_a_message_naming_the_problem(tmp_path, name, text, message):
    with pytest.raises(InputError, match=message):
        read_difficulty_file(write(tmp_path, name, text))


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        read_difficulty_file(tmp_path / "nope.json")


def test_loading_inserts_new_dates_updates_changed_ones_and_keeps_the_rest(tmp_path, database_url):
    first = load(database_url, write(tmp_path, "a.json", json.dumps({"2024-01-01": "5", "2024-01-02": "6"})))
    second = load(database_url, write(tmp_path, "b.json", json.dumps({"2024-01-02": "6", "2024-01-01": "9",
                                                                       "2024-01-03": "7"})))

    assert (first.inserted, first.updated, first.unchanged) == (2, 0, 0)
    assert (second.inserted, second.updated, second.unchanged) == (1, 1, 1)
    assert execute(database_url, "SELECT difficulty::text FROM bitcoin_difficulty ORDER BY 1") == [
        ("6",), ("7",), ("9",)]
