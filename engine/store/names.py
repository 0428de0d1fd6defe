"""The engine's names: the schema of its own tables (validated, quoted), its tables and the
production ones, the comment that marks a table as its own, and schema.sql's sections.

Statements that name the engine's tables write `{engine}.table`; `sql` puts the validated,
quoted schema name in its place (connectorx cannot bind parameters nor run `SET search_path`
first, so the name is part of the text). Every table the engine creates carries the comment
`engine:<table>:v1`: a table without it is not the engine's, and the engine never alters,
drops or writes it.
"""

from __future__ import annotations

from importlib.resources import files

from engine.store.config import check_schema_name

DEFAULT_SCHEMA = "engine"
PLACEHOLDER = "{engine}"
MARK_VERSION = "v1"

CALCULATIONS = "historical_bitcoin_calculations"
KEY_COLUMNS = ("settlement_date", "settlement_period", "farm_id", "miner_model")
KEY_INDEX = "historical_bitcoin_calculations_key"
# Used for the month's range reads while duplicates keep the unique index from being built.
LOOKUP_INDEX = "historical_bitcoin_calculations_key_lookup"
SOURCE_DATE_INDEX = "curtailment_records_settlement_date_idx"

PRODUCTION_TABLES = (
    "curtailment_records", CALCULATIONS, "bitcoin_daily_summaries", "bitcoin_monthly_summaries",
    "bitcoin_yearly_summaries",
)
ENGINE_TABLES = (
    "bitcoin_difficulty", "reconciliation_runs", "reconciliation_progress", "reconciliation_backfills",
    "reconciliation_fingerprints",
)
TABLES = PRODUCTION_TABLES + ENGINE_TABLES
# Older tools' tables `db init` reports (besides any table named like one of the engine's).
RELATED_PATTERN = "reconciliation%"




def quoted(engine_schema: str) -> str:
    """The schema's name as an SQL identifier (validated, so quoting cannot be escaped)."""
    return f'"{check_name(engine_schema)}"'


def sql(statement: str, engine_schema: str = DEFAULT_SCHEMA) -> str:
    """`statement` with `{engine}` replaced by the quoted engine schema."""
    return statement.replace(PLACEHOLDER, quoted(engine_schema))


def table(name: str, engine_schema: str = DEFAULT_SCHEMA) -> str:
    """The qualified name of one of the engine's tables, `"engine".name`."""
    if name not in ENGINE_TABLES:
        raise ValueError(f"{name} is not one of the engine's tables")
    return f"{quoted(engine_schema)}.{name}"


def mark(name: str) -> str:
    """The comment that marks a table as created by the engine."""
    return f"engine:{name}:{MARK_VERSION}"


check_name = check_schema_name


def sections(engine_schema: str) -> dict[str, str]:
    """schema.sql cut at its `-- table: NAME` and `-- upgrade` markers, schema filled in."""
    text = sql(files("engine.store").joinpath("schema.sql").read_text(), engine_schema)
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- table: "):
            current = sections.setdefault(line.removeprefix("-- table: ").strip(), [])
        elif line.strip() == "-- upgrade":
            current = sections.setdefault("upgrade", [])
        current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}

