"""Alerts: a failed month, a failed verification, a run that ends with missing rows.

Each alert is logged and, when `ENGINE_ALERT_WEBHOOK` is set, posted there as a Slack-compatible
JSON body (`text` plus one `attachments` entry with fields). Posting never fails the run: any
error is logged and forgotten. A month that fails again with the same error as before the run
is not alerted again, so a scheduled job every few minutes does not repeat itself.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from engine.months import Month
from engine.operations.retries import MonthOutcome

log = logging.getLogger(__name__)

_COLOURS = {"month_failed": "danger", "verification_failed": "danger", "regressed": "danger",
            "missing_rows": "warning"}


@dataclass(frozen=True)
class Alert:
    kind: str  # month_failed | verification_failed | regressed | missing_rows
    title: str
    text: str
    fields: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "text": self.text, "fields": self.fields}

    def slack_body(self, source: str) -> dict[str, Any]:
        """The body Slack's incoming webhooks (and Mattermost, Rocket.Chat, …) accept."""
        return {
            "text": f"engine: {self.title}",
            "attachments": [{
                "color": _COLOURS.get(self.kind, "warning"),
                "title": self.title,
                "text": self.text,
                "fields": [{"title": k, "value": v, "short": len(v) <= 40}
                           for k, v in self.fields.items()],
                "footer": source,
                "ts": int(time.time()),
            }],
        }


def mask_webhook(url: str) -> str:
    """Webhook URLs carry their token in the path: show only scheme and host."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/…"


class Alerter:
    """Sends alerts for one run. Thread-safe; `sent` lists what was raised."""

    def __init__(self, webhook: str | None, *, source: str, timeout: float = 5.0) -> None:
        self.webhook, self.timeout = webhook, timeout
        self.source = f"{source} on {socket.gethostname()}"
        self.sent: list[Alert] = []
        self._lock = threading.Lock()

    def month_failed(self, outcome: MonthOutcome) -> None:
        """Alert on a month that ended failed or unverified, unless it already had that error."""
        previous = outcome.previous
        if previous and previous.status == "failed" and previous.last_error == outcome.error:
            log.info("%s still fails with the same error; not alerting again", outcome.month)
            return
        verification = outcome.status == "unverified"
        kind = "verification_failed" if verification else "month_failed"
        title = f"{outcome.month} {'failed verification' if verification else 'failed'}"
        fields = {"month": str(outcome.month), "kind": outcome.error_kind or "error",
                  "tries": str(outcome.tries)}
        if outcome.run_id:
            fields["run"] = str(outcome.run_id)
        self.send(Alert(kind, title, outcome.error or "no error message", fields))

    def missing_rows(self, missing: dict[Month, int], reasons: dict[Month, str]) -> None:
        """Alert that the run ended with `missing` rows (month → rows), `reasons` per month."""
        total = sum(missing.values())
        if total == 0:
            return
        lines = [f"{month}: {rows:,} missing ({reasons.get(month, 'not reconciled')})"
                 for month, rows in sorted(missing.items()) if rows]
        self.send(Alert("missing_rows", f"run ended with {total:,} missing row(s) in "
                        f"{len(lines)} month(s)", "\n".join(lines),
                        {"missing_rows": f"{total:,}", "months": ", ".join(
                            str(m) for m in sorted(missing) if missing[m])}))

    def send(self, alert: Alert) -> bool:
        """Log `alert` and post it to the webhook; return whether the post succeeded."""
        with self._lock:
            self.sent.append(alert)
        log.warning("alert: %s: %s", alert.title, alert.text.replace("\n", "; "))
        if not self.webhook:
            return False
        body = json.dumps(alert.slack_body(self.source)).encode()
        request = urllib.request.Request(self.webhook, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            return True
        except (urllib.error.URLError, OSError, ValueError) as error:
            log.warning("could not post the alert to %s: %s", mask_webhook(self.webhook), error)
            return False
