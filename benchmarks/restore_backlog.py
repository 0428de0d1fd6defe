"""Put the demo database back to its production-shaped backlog (or an empty calculations
table with --empty) without reconciling, so `engine run` can be measured from there.

    ENGINE_DATA_DIR=/tmp/bench uv run python benchmarks/restore_backlog.py [--empty] [--months A..B]
"""

from __future__ import annotations

import argparse
import sys

from engine.demo import fill_database
from engine.months import parse_range
from engine.store import db
from engine.store.config import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", default="2022-01..2024-12")
    parser.add_argument("--empty", action="store_true",
                        help="empty the calculations table: the rebuild-from-nothing case")
    args = parser.parse_args()
    settings = Settings.from_env()
    url = db.resolve_url(settings.database_url, settings.data_dir,
                         connect_timeout_s=settings.connect_timeout_s)
    data = fill_database(url, parse_range(args.months), embedded=settings.database_url is None)
    with db.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute("TRUNCATE engine.reconciliation_backfills")  # forget earlier backfills
        if args.empty:
            cursor.execute("TRUNCATE historical_bitcoin_calculations")
        conn.commit()
    with db.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE historical_bitcoin_calculations")
    present = 0 if args.empty else data.present_rows
    print(f"{data.curtailment_records:,} curtailment records · {data.expected_rows:,} expected rows "
          f"· {present:,} calculation rows present (drifted and orphan rows included)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
