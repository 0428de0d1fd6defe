"""The throttle: a rows-per-second limit held over a run, pauses, and the load-aware back-off
that reads pg_stat_activity and the merge's latency."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from datetime import date

from engine.operations.backfill import with_application_name
from engine.operations.throttle import LoadSample, Throttle, ThrottleConfig, sample_load
from engine.store import db
from tests.conftest import execute, insert_curtailment, insert_difficulty
from tests.test_backfill import backfill

MONTHS = ((2023, 4), (2023, 5), (2023, 6))
KEYS_PER_MONTH = 200  # 10 days × 20 periods, one farm: 600 rows a month with 3 models


def seed_small_months(url: str) -> int:
    """Three months of 200 qualifying keys each: 1,800 rows to insert. Returns that."""
    rows, difficulty = [], {}
    for year, month in MONTHS:
        for day in range(1, 11):
            d = date(year, month, day)
            difficulty[d.isoformat()] = "50000000000000"
            rows += [(d.isoformat(), period, "FARM", "-1.5") for period in range(1, 21)]
    insert_curtailment(url, rows)
    insert_difficulty(url, difficulty)
    return 3 * KEYS_PER_MONTH * len(MONTHS)


def test_max_rows_per_second_holds_within_20_percent_over_a_run(database_url, settings):
    total = seed_small_months(database_url)
    limit = 1_000.0

    result = backfill(settings, jobs=2, throttle=ThrottleConfig(max_rows_per_second=limit))

    assert result.counts()["inserted"] == total
    rate = total / result.seconds
    assert 0.8 * limit <= rate <= 1.2 * limit, f"{rate:.0f} rows/s against a limit of {limit:.0f}"
    record = json.loads(execute(database_url, "SELECT throttle::text FROM reconciliation_backfills")[0][0])
    assert record["waited_seconds"] > 0  # how long depends on the machine; the rate does not
    assert {d["action"] for d in record["decisions"]} == {"wait"}


def test_without_a_limit_the_same_run_never_waits(database_url, settings):
    total = seed_small_months(database_url)

    result = backfill(settings, jobs=2)

    assert result.counts()["inserted"] == total
    assert result.throttle["waited_seconds"] == 0 and result.throttle["decisions"] == []


def test_a_pause_rests_each_worker_between_months(database_url, settings):
    seed_small_months(database_url)

    result = backfill(settings, jobs=1, throttle=ThrottleConfig(pause_seconds=0.4))

    assert result.seconds >= 0.8  # two pauses between three months


def test_load_aware_backs_off_when_busy_and_recovers_when_calm():
    throttle = Throttle(ThrottleConfig(load_aware=True, busy_backends=3, pause_seconds=0.0), jobs=4)
    stop = threading.Event()

    def month(sample: LoadSample) -> tuple[int, float]:
        assert throttle.acquire("m", 0.0, stop)
        throttle.release("m", started_at=time.monotonic(), inserted=10_000, sample=sample)
        return throttle.jobs_allowed, throttle.pause

    assert month(LoadSample(0, 0, 0.010)) == (4, 0.0)  # calm; the merge's best latency
    assert month(LoadSample(5, 0, 0.010)) == (2, 1.0)  # five other active sessions
    assert month(LoadSample(0, 2, 0.010)) == (1, 2.0)  # two lock waits
    assert month(LoadSample(0, 0, 0.050)) == (1, 4.0)  # the merge 5× slower than its best
    assert month(LoadSample(0, 0, 0.011)) == (2, 2.0)  # calm: one step back
    assert month(LoadSample(1, 0, 0.010)) == (3, 1.0)
    assert month(LoadSample(0, 0, 0.010)) == (4, 0.5)
    actions = [d.action for d in throttle.decisions]
    assert actions == ["back_off", "back_off", "back_off", "recover", "recover", "recover"]
    assert "5 other active session(s)" in throttle.decisions[0].reason
    assert "5.0× its best" in throttle.decisions[2].reason


def test_sample_load_counts_other_sessions_and_lock_waits_but_not_the_engines(database_url):
    engine_url = with_application_name(database_url, "engine-test")
    sleepers = [threading.Thread(target=execute, args=(url, "SELECT pg_sleep(1)"))
                for url in (database_url, database_url, engine_url)]
    holder = db.connect(database_url)
    with holder.cursor() as cursor:
        cursor.execute("LOCK TABLE curtailment_records IN ACCESS EXCLUSIVE MODE")
    waiter = threading.Thread(target=execute, args=(database_url, "SELECT count(*) FROM curtailment_records"))
    for thread in [*sleepers, waiter]:
        thread.start()
    time.sleep(0.4)
    try:
        with db.connect(engine_url) as conn, conn.cursor() as cursor:
            sample = sample_load(cursor, merge_seconds=0.5, inserted=20_000)
    finally:
        holder.rollback()
        holder.close()
        for thread in [*sleepers, waiter]:
            thread.join()

    assert sample == LoadSample(active=3, lock_waits=1, merge_seconds_per_krow=0.025)


def test_load_aware_run_backs_off_while_others_are_busy_and_records_it(database_url, settings):
    """Three other sessions sleep until the first month is done (busy at 2), then end."""
    seed_small_months(database_url)
    sleep = "SELECT pg_sleep(60)"

    def sleeper() -> None:
        with contextlib.suppress(Exception):  # cancelled below, as meant
            execute(database_url, sleep)

    sleepers = [threading.Thread(target=sleeper) for _ in range(3)]
    for thread in sleepers:
        thread.start()
    # ADBC sends a query as COPY (…) TO STDOUT; only the sleepers' own text starts so.
    sleeping = ("FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT pg_sleep(60))%' "
                "AND state = 'active'")
    wait_until(lambda: execute(database_url, f"SELECT count(*) {sleeping}")[0][0] == 3)

    woken = threading.Event()

    def wake_them(event) -> None:
        if event.kind == "done" and not woken.is_set():
            woken.set()
            execute(database_url, f"SELECT pg_cancel_backend(pid) {sleeping}")

    result = backfill(settings, jobs=2, on_event=wake_them,
                      throttle=ThrottleConfig(load_aware=True, busy_backends=2))
    for thread in sleepers:
        thread.join()

    decisions = result.throttle["decisions"]
    assert decisions[0]["action"] == "back_off" and decisions[0]["jobs"] == 1
    assert "other active session(s)" in decisions[0]["reason"]
    assert decisions[-1]["action"] == "recover"
    stored = json.loads(execute(database_url, "SELECT throttle::text FROM reconciliation_backfills")[0][0])
    assert stored["decisions"] == decisions
    assert {o.status for o in result.outcomes} == {"verified"}


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
