"""What a month's source held when it was verified, so a changed month can be found cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from engine.months import Month
from engine.store import db
from engine.store.schema import DEFAULT_SCHEMA, sql

SOURCE_FINGERPRINTS = """
SELECT to_char(settlement_date, 'YYYY-MM'), count(*), max(id), max(created_at), sum(volume)::text
FROM curtailment_records WHERE settlement_date >= $1 AND settlement_date < $2
GROUP BY 1 ORDER BY 1
"""


STORE_FINGERPRINT = """
UPDATE {engine}.reconciliation_progress SET source_records = $2, source_max_id = $3,
    source_max_created_at = $4, source_volume = $5::numeric, last_error_kind = NULL
WHERE month = $1
"""


@dataclass(frozen=True)
class Fingerprint:
    """What a month's source held: records, highest id, newest created_at and Σ volume.

    New records raise the count and the id, re-ingested days raise the id and created_at,
    deleted ones lower the count, edited volumes move the sum."""

    records: int
    max_id: int
    max_created_at: datetime | None
    volume: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "max_id": self.max_id,
                "max_created_at": self.max_created_at.isoformat() if self.max_created_at else None,
                "volume": str(self.volume)}

    def describe_change(self, before: Fingerprint) -> str:
        """What differs from `before`, in words (for the log and the scheduled job's output)."""
        parts = []
        if self.records != before.records:
            parts.append(f"records {before.records:,} → {self.records:,}")
        if self.max_id != before.max_id:
            parts.append(f"max id {before.max_id} → {self.max_id}")
        if self.max_created_at != before.max_created_at:
            parts.append("newer created_at")
        if self.volume != before.volume:
            parts.append("Σ volume changed")
        return ", ".join(parts) or "unchanged"


def source_fingerprints(cursor: db.Cursor, first: Month, last: Month) -> dict[Month, Fingerprint]:
    """The fingerprint of every month from `first` to `last` that has curtailment records."""
    rows = db.fetch_all(cursor, SOURCE_FINGERPRINTS, (first.first_day, last.next_first_day))
    return {Month.parse(r[0]): Fingerprint(int(r[1]), int(r[2]), r[3], Decimal(r[4])) for r in rows}


def store_fingerprint(cursor: db.Cursor, month: Month, fingerprint: Fingerprint, *,
                      engine_schema: str = DEFAULT_SCHEMA) -> None:
    """Remember what the source held when the month was verified."""
    cursor.execute(sql(STORE_FINGERPRINT, engine_schema),
                   (str(month), fingerprint.records, fingerprint.max_id,
                    fingerprint.max_created_at, str(fingerprint.volume)))

