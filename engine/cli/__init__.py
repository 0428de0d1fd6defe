"""The `engine` command line: parse, call the library, render. No SQL and no maths here.

`common` holds the app and what every command shares; each command group lives in its own
module and registers itself on the app when imported. Data libraries (Polars, DuckDB, ADBC,
connectorx, PyArrow) are imported inside the commands, so `engine --help` loads none of them.
"""

from __future__ import annotations

from engine.cli import backfill, database, month, repair, status
from engine.cli.common import app

__all__ = ["app", "backfill", "database", "main", "month", "repair", "status"]


def main() -> None:
    app()
