"""Alerts reach a local webhook (http.server in a thread) and never fail the run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from engine.months import Month
from engine.operations.alerts import Alert, Alerter, mask_webhook
from engine.operations.backfill import BackfillRequest, run_backfill
from engine.store.config import Settings
from tests.conftest import execute, insert_curtailment
from tests.test_backfill import FAST_RETRY, engine, seed_two_months


class Webhook:
    """A local webhook that records every JSON body posted to it and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.status = status
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def seed_with_a_bad_month(url: str) -> None:
    """2023-11 lacks the difficulty of 2023-11-20 (a data error); 2023-12 is fine."""
    seed_two_months(url)
    insert_curtailment(url, [("2023-11-20", 9, "C", "-1")])


def test_a_failed_month_and_the_missing_rows_it_leaves_reach_the_webhook(database_url, tmp_path,
                                                                         webhook):
    seed_with_a_bad_month(database_url)

    result = engine(database_url, tmp_path, "run", env_extra={"ENGINE_ALERT_WEBHOOK": webhook.url})

    assert result.exit_code == 2
    kinds = [body["attachments"][0]["title"] for body in webhook.bodies]
    assert kinds == ["2023-11 failed", "run ended with 6 missing row(s) in 1 month(s)"]
    failed = webhook.bodies[0]
    assert failed["text"] == "engine: 2023-11 failed"
    attachment = failed["attachments"][0]
    assert attachment["color"] == "danger" and "2023-11-20" in attachment["text"]
    assert {f["title"]: f["value"] for f in attachment["fields"]}["kind"] == "data"
    assert "2023-11: 6 missing (data)" in webhook.bodies[1]["attachments"][0]["text"]
    assert "secret-token" not in result.output


def test_the_same_failure_again_is_not_alerted_twice(database_url, tmp_path, webhook):
    seed_with_a_bad_month(database_url)
    engine(database_url, tmp_path, "run", env_extra={"ENGINE_ALERT_WEBHOOK": webhook.url})
    webhook.bodies.clear()

    again = engine(database_url, tmp_path, "run", env_extra={"ENGINE_ALERT_WEBHOOK": webhook.url})

    assert again.exit_code == 2
    assert webhook.bodies == []


def test_a_failed_verification_is_alerted(database_url, settings, webhook):
    seed_two_months(database_url)

    def stray_writer(event) -> None:
        if event.kind == "step" and event.detail == "verify":
            execute(database_url, """INSERT INTO historical_bitcoin_calculations (settlement_date,
                settlement_period, farm_id, miner_model, bitcoin_mined, difficulty)
                VALUES ('2023-12-03', 7, 'Z', 'S9', 1, 1)""")

    alerter = Alerter(webhook.url, source="test")
    result = run_backfill(settings, BackfillRequest(first=Month(2023, 12), last=Month(2023, 12),
                                                    retry=FAST_RETRY),
                          on_event=stray_writer, alerter=alerter)

    assert result.exit_code == 1
    assert [a.kind for a in alerter.sent] == ["verification_failed"]  # no row is missing
    assert webhook.bodies[0]["attachments"][0]["title"] == "2023-12 failed verification"
    assert "unexpected_keys" in webhook.bodies[0]["attachments"][0]["text"]


def test_a_failing_webhook_never_fails_the_run(database_url, tmp_path, caplog):
    seed_with_a_bad_month(database_url)
    broken = Webhook(status=500)
    try:
        result = engine(database_url, tmp_path, "run",
                        env_extra={"ENGINE_ALERT_WEBHOOK": broken.url})
    finally:
        broken.close()
    unreachable = Alerter("http://127.0.0.1:9/hook", source="test", timeout=1)

    assert result.exit_code == 2  # the month's own failure, not the webhook's
    assert "Traceback" not in result.output
    assert len(broken.bodies) == 2
    assert unreachable.send(Alert("missing_rows", "t", "x")) is False
    assert "could not post the alert to http://127.0.0.1/…" in caplog.text


def test_without_a_webhook_alerts_are_only_logged(caplog):
    alerter = Alerter(None, source="test")

    assert alerter.send(Alert("month_failed", "2023-11 failed", "why")) is False
    assert "alert: 2023-11 failed: why" in caplog.text


def test_the_webhook_url_is_never_shown_whole():
    assert mask_webhook("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com/…"
    assert "XYZ" not in repr(Settings(alert_webhook="https://hooks.slack.com/services/T0/B0/XYZ"))
