"""Against a database shaped like production: the production tables as DESIGN.md gives them
(no unique key, no index on the source's date, owned by another role), the older tools'
tables under the engine's names, legacy damage in the calculations. Every command works, as
the owner and as a least-privilege role, and leaves every older table exactly as it was."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import pytest
from typer.testing import CliRunner

from engine import formula
from engine.cli import app
from engine.reference import REFERENCE_DIR
from engine.store import schema
from engine.store.config import load_miner_models
from tests.conftest import execute, with_database

runner = CliRunner()

PRODUCTION_DDL = """
CREATE TABLE curtailment_records (id serial PRIMARY KEY, settlement_date date NOT NULL,
  settlement_period integer NOT NULL, farm_id text NOT NULL, lead_party_name text,
  volume numeric NOT NULL, payment numeric NOT NULL, original_price numeric NOT NULL,
  final_price numeric NOT NULL, so_flag boolean, cadl_flag boolean,
  created_at timestamp DEFAULT now());
CREATE TABLE historical_bitcoin_calculations (id serial PRIMARY KEY,
  settlement_date date NOT NULL, settlement_period integer NOT NULL, farm_id text NOT NULL,
  miner_model text NOT NULL, bitcoin_mined numeric NOT NULL, difficulty numeric NOT NULL,
  calculated_at timestamp DEFAULT now());
CREATE TABLE bitcoin_daily_summaries (id serial PRIMARY KEY, summary_date date NOT NULL,
  miner_model text NOT NULL, bitcoin_mined numeric NOT NULL, created_at timestamp DEFAULT now(),
  updated_at timestamp DEFAULT now());
CREATE TABLE bitcoin_monthly_summaries (id serial PRIMARY KEY, year_month text NOT NULL,
  miner_model text NOT NULL, bitcoin_mined numeric NOT NULL, created_at timestamp DEFAULT now(),
  updated_at timestamp DEFAULT now());
CREATE TABLE bitcoin_yearly_summaries (id serial PRIMARY KEY, year text NOT NULL,
  miner_model text NOT NULL, bitcoin_mined numeric NOT NULL, created_at timestamp DEFAULT now(),
  updated_at timestamp DEFAULT now());
"""

# The older runner's progress table (keyed by 'YYYY-MM') and the older script's (by batch),
# the latter in a schema of its own on the search_path; its per-date details; a leftover.
OLDER_DDL = """
CREATE TABLE reconciliation_progress (id serial PRIMARY KEY, time_period text UNIQUE,
  status text, percentage_complete numeric, last_updated timestamp, total_records int,
  processed_records int, error_details text);
INSERT INTO reconciliation_progress (time_period, status, percentage_complete, last_updated,
  total_records, processed_records, error_details) VALUES
  ('2023-11', 'completed', 100, '2024-01-05 10:00', 1200, 1200, NULL),
  ('2023-12', 'failed', 41.5, '2024-01-06 11:30', 2400, 996, 'timeout after 996 rows');
CREATE SCHEMA legacy;
CREATE TABLE legacy.reconciliation_progress (batch_id text UNIQUE, year int, month int,
  dates_processed int, dates_total int, status text, started_at timestamp);
INSERT INTO legacy.reconciliation_progress VALUES
  ('b-2023-12-a', 2023, 12, 14, 31, 'running', '2024-02-01 09:00'),
  ('b-2023-11-a', 2023, 11, 30, 30, 'done', '2024-02-01 08:00');
CREATE TABLE reconciliation_date_details (batch_id text, date date, missing int, fixed int,
  PRIMARY KEY (batch_id, date));
INSERT INTO reconciliation_date_details VALUES ('b-2023-12-a', '2023-12-01', 12, 12),
  ('b-2023-12-a', '2023-12-02', 7, 3);
CREATE TABLE reconciliation_progress_2023 (time_period text, status text);
INSERT INTO reconciliation_progress_2023 VALUES ('2023-10', 'completed');
"""
OLDER_TABLES = ("public.reconciliation_progress", "legacy.reconciliation_progress",
                "public.reconciliation_date_details", "public.reconciliation_progress_2023")
SUMMARIES = ("bitcoin_daily_summaries", "bitcoin_monthly_summaries", "bitcoin_yearly_summaries")
FARMS = ("T_ALPHA-1", "T_BRAVO-2", "T_CHARLIE-1", "T_DELTA-3")
DAYS = [date(2023, 11, 1) + timedelta(days=n) for n in range(61)]  # 2023-11 and 2023-12
CALCS_EXPORT = """SELECT id, settlement_date, settlement_period, farm_id, miner_model,
                  bitcoin_mined::text, difficulty::text, calculated_at
                  FROM historical_bitcoin_calculations ORDER BY id"""


def curtailment() -> pl.DataFrame:
    """Two months of four farms, a record every third period per farm (two records in some
    periods, a zero volume in others): 1,098 qualifying keys, so 3,294 expected rows."""
    rows = []
    for day_number, day in enumerate(DAYS):
        for period in range(1, 49):
            for farm_number, farm in enumerate(FARMS):
                if (period + farm_number + day_number) % 3:
                    continue
                volume = Decimal(-(period * 7 + farm_number * 13 + day_number) % 97) / 4
                rows.append((day, period, farm, -volume))
                if period % 8 == 0:
                    rows.append((day, period, farm, Decimal("-1.25")))
    frame = pl.DataFrame(rows, schema={"settlement_date": pl.Date, "settlement_period": pl.Int32,
                                       "farm_id": pl.String, "volume": pl.Decimal(38, 10)},
                         orient="row")
    zero = pl.lit(Decimal(0), pl.Decimal(38, 10))
    return frame.with_columns(payment=zero, original_price=zero, final_price=zero)


def difficulty() -> pl.DataFrame:
    return pl.DataFrame({"settlement_date": DAYS,
                         "difficulty": [Decimal(61030681983175 + 1_000_000 * n) for n in range(61)]},
                        schema={"settlement_date": pl.Date, "difficulty": pl.Decimal(38, 10)})


def seed(url: str, data_dir: Path) -> Path:
    """The production tables (owned by the server's superuser) with the older tables, two
    months of curtailment, half the expected calculations and legacy damage: 3 keys written
    twice, 4 drifted rows, 2 orphans. Returns the difficulty file `engine difficulty load`
    imports."""
    with adbc.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executescript(PRODUCTION_DDL + OLDER_DDL)
    records = curtailment()
    days = difficulty()
    expected = formula.expected_rows(records, days, load_miner_models(
        REFERENCE_DIR / "miner_models.toml"))
    present = expected.filter(pl.col("settlement_date").dt.day() % 2 == 0).select(
        "settlement_date", "settlement_period", "farm_id", "miner_model", "bitcoin_mined",
        "difficulty")
    damage = pl.concat([
        present.head(3),  # duplicated keys
        present.slice(10, 2).with_columns(farm_id=pl.lit("T_GHOST-1")),  # orphans
    ])
    with adbc.connect(url) as conn, conn.cursor() as cursor:
        cursor.adbc_ingest("curtailment_records", records.to_arrow(), mode="append")
        cursor.adbc_ingest(schema.CALCULATIONS, pl.concat([present, damage]).to_arrow(),
                           mode="append")
        cursor.execute("UPDATE historical_bitcoin_calculations SET bitcoin_mined = bitcoin_mined * 2 "
                       "WHERE id IN (20, 21, 22, 23)")
        conn.commit()
    path = data_dir / "difficulty.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(d): str(v) for d, v in days.iter_rows()}))
    return path


def export_older(url: str) -> dict[str, object]:
    """Every older table, byte for byte: its rows as text, its columns, its comment, its
    indexes; and the production tables' definitions."""
    out: dict[str, object] = {}
    for name in OLDER_TABLES:
        out[name] = execute(url, f"SELECT t::text FROM {name} t ORDER BY 1")
    for name in (*OLDER_TABLES, *schema.PRODUCTION_TABLES):
        out[f"{name} definition"] = execute(url, """
            SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   coalesce(obj_description(a.attrelid, 'pg_class'), '')
            FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0
            AND NOT a.attisdropped ORDER BY a.attnum""", (name,))
        out[f"{name} indexes"] = execute(url, """
            SELECT indexdef::text FROM pg_indexes WHERE format('%I.%I', schemaname, tablename)::regclass
            = to_regclass($1) ORDER BY 1""", (name,))
    return out


@pytest.fixture
def production(server_url: str) -> Iterator[str]:
    """A new database shaped like production (see `seed`), the `legacy` schema on its
    search_path; dropped afterwards."""
    name = f"engine_prod_{uuid.uuid4().hex[:12]}"
    with adbc.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
        cursor.execute(f'ALTER DATABASE {name} SET search_path = "$user", public, legacy')
    yield with_database(server_url, name)
    with adbc.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cursor.execute("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'engine_app_%'")
        for (role,) in cursor.fetchall():
            cursor.execute(f"DROP ROLE IF EXISTS {role}")


def grants(database: str, role: str) -> str:
    """The README's GRANT statements for `role` (see "Connecting to production")."""
    return f"""
CREATE ROLE {role} LOGIN;
GRANT CONNECT ON DATABASE {database} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON curtailment_records TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON historical_bitcoin_calculations,
    bitcoin_daily_summaries, bitcoin_monthly_summaries, bitcoin_yearly_summaries TO {role};
GRANT USAGE ON SEQUENCE historical_bitcoin_calculations_id_seq, bitcoin_daily_summaries_id_seq,
    bitcoin_monthly_summaries_id_seq, bitcoin_yearly_summaries_id_seq TO {role};
CREATE SCHEMA engine;
GRANT USAGE, CREATE ON SCHEMA engine TO {role};
"""


def least_privilege(url: str) -> str:
    """Create a role with only the README's grants; return `url` connecting as it."""
    role = f"engine_app_{uuid.uuid4().hex[:8]}"
    database = url.rsplit("/", 1)[1]
    with adbc.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executescript(grants(database, role))
    host = url.split("@", 1)[1]
    return f"postgresql://{role}@{host}"


def cli(url: str, data_dir: Path, *args: str, code: int = 0, schema_name: str | None = None):
    env = {"ENGINE_DATABASE_URL": url, "ENGINE_DATA_DIR": str(data_dir)}
    if schema_name:
        env["ENGINE_SCHEMA"] = schema_name
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.output)
    assert "Traceback" not in result.output
    return result


def every_command(url: str, data_dir: Path, difficulty_file: Path, *,
                  schema_name: str | None = None) -> dict[str, object]:
    """`db init`, `difficulty load`, `month`, `run`, `diff`, `run --fix all`, `undo`,
    `status`, `report`, each with its exit code checked; returns what they printed."""
    out: dict[str, object] = {}

    def run(*args: str, code: int = 0) -> dict:
        result = cli(url, data_dir, *args, "--json", code=code, schema_name=schema_name)
        return json.loads(result.stdout)

    out["init"] = run("db", "init")
    run("difficulty", "load", str(difficulty_file))
    out["month"] = run("month", "2023-12")
    out["run"] = run("run")
    out["diff"] = run("diff", "--from", "2023-11", "--to", "2023-12", code=1)
    before_fix = execute(url, CALCS_EXPORT)
    out["fix"] = run("run", "--fix", "all")
    out["diff_after_fix"] = run("diff", "--from", "2023-11", "--to", "2023-12")
    out["undo"] = run("undo", "--backfill", str(out["fix"]["backfill_id"]))
    out["undone_equal"] = execute(url, CALCS_EXPORT) == before_fix
    out["status"] = run("status")
    out["report"] = run("report")
    return out


def check_outcome(out: dict[str, object], *, reads_older: bool = True) -> None:
    init = out["init"]
    assert isinstance(init, dict)
    found = {f"{t['schema']}.{t['name']}": t for t in init["foreign"]}
    assert set(found) == set(OLDER_TABLES)
    assert found["public.reconciliation_progress"]["rows"] == (2 if reads_older else None)
    assert "time_period text" in found["public.reconciliation_progress"]["columns"]
    assert "batch_id text" in found["legacy.reconciliation_progress"]["columns"]
    assert init["unique_key"] == "blocked" and init["duplicate_keys"] == 3
    assert init["created_indexes"] == []
    assert schema.CREATE_SOURCE_DATE_INDEX in init["proposed"]
    assert out["month"]["status"] == "verified"  # type: ignore[index]
    assert out["run"]["counts"]["failed"] == 0  # type: ignore[index]
    totals = out["diff"]["totals"]  # type: ignore[index]
    assert (totals["missing"], totals["drift"], totals["orphans"], totals["duplicates"]) == (0, 4, 2, 6)
    assert out["diff_after_fix"]["totals"]["drift"] == 0  # type: ignore[index]
    assert out["undone_equal"] is True
    assert out["status"]["overall"]["missing"] == 0  # type: ignore[index]


def test_every_command_works_on_production_as_it_is_and_leaves_older_tables_alone(
        production: str, tmp_path: Path) -> None:
    difficulty_file = seed(production, tmp_path)
    before = export_older(production)

    out = every_command(production, tmp_path / "data", difficulty_file)

    check_outcome(out)
    assert export_older(production) == before
    own = execute(production, "SELECT c.relname::text, obj_description(c.oid, 'pg_class')::text "
                              "FROM pg_class c WHERE c.relnamespace = 'engine'::regnamespace "
                              "AND c.relkind = 'r' ORDER BY 1")
    assert own == [(name, schema.mark(name)) for name in sorted(schema.ENGINE_TABLES)]


def test_every_command_works_for_a_least_privilege_role(production: str, tmp_path: Path) -> None:
    difficulty_file = seed(production, tmp_path)
    before = export_older(production)
    role_url = least_privilege(production)

    out = every_command(role_url, tmp_path / "data", difficulty_file)

    check_outcome(out, reads_older=False)  # it may not read the older tables: rows unknown
    init = out["init"]
    assert isinstance(init, dict)
    assert schema.CREATE_KEY_INDEX not in init["proposed"]  # duplicates block it: the lookup one
    assert export_older(production) == before


def test_create_indexes_is_refused_to_a_least_privilege_role_with_a_note(
        production: str, tmp_path: Path) -> None:
    seed(production, tmp_path)
    role_url = least_privilege(production)

    result = cli(role_url, tmp_path, "db", "init", "--create-indexes")

    assert "could not create index" in result.stdout and "owner" in result.stdout
    indexes = execute(production, "SELECT count(*) FROM pg_indexes WHERE tablename IN "
                                  "('curtailment_records', 'historical_bitcoin_calculations')")
    assert indexes == [(2,)]  # the primary keys only


def test_create_indexes_as_the_owner_builds_what_db_init_proposed(production: str,
                                                                  tmp_path: Path) -> None:
    seed(production, tmp_path)
    execute(production, "DELETE FROM historical_bitcoin_calculations WHERE id > 1645")
    proposed = json.loads(cli(production, tmp_path, "db", "init", "--json").stdout)

    built = json.loads(cli(production, tmp_path, "db", "init", "--create-indexes", "--json").stdout)

    assert proposed["unique_key"] == "missing"
    assert set(proposed["proposed"]) == {schema.CREATE_SOURCE_DATE_INDEX, schema.CREATE_KEY_INDEX}
    assert built["unique_key"] == "created" and built["proposed"] == []
    assert set(built["created_indexes"]) == {schema.KEY_INDEX, schema.SOURCE_DATE_INDEX}


def test_a_missing_grant_names_the_table_the_role_and_the_grant(production: str,
                                                                 tmp_path: Path) -> None:
    difficulty_file = seed(production, tmp_path)
    role_url = least_privilege(production)
    role = role_url.split("//", 1)[1].split("@", 1)[0]
    cli(role_url, tmp_path, "db", "init")
    cli(role_url, tmp_path, "difficulty", "load", str(difficulty_file))
    execute(production, f"REVOKE INSERT ON historical_bitcoin_calculations FROM {role}")

    result = cli(role_url, tmp_path, "month", "2023-12", code=2)

    assert result.stderr.count("\n") == 1
    assert (f"permission denied on table historical_bitcoin_calculations for role {role}: "
            f"`GRANT SELECT, INSERT, UPDATE, DELETE ON historical_bitcoin_calculations TO {role}`"
            ) in result.stderr


def test_production_tables_are_not_created_on_a_database_the_engine_does_not_own(
        production: str, tmp_path: Path) -> None:
    result = cli(production, tmp_path, "db", "init", code=2)

    assert "curtailment_records, historical_bitcoin_calculations" in result.stderr
    assert "--create-tables" in result.stderr and result.stderr.count("\n") == 1
    assert execute(production, "SELECT count(*) FROM pg_tables WHERE schemaname "
                               "NOT IN ('pg_catalog', 'information_schema')") == [(0,)]
    assert execute(production, "SELECT count(*) FROM pg_namespace WHERE nspname = 'engine'") == [(0,)]

    created = json.loads(cli(production, tmp_path, "db", "init", "--create-tables", "--json").stdout)

    assert set(schema.PRODUCTION_TABLES) <= set(created["created_tables"])
    assert created["unique_key"] == "created"  # on tables it created, the engine builds them


def test_another_schema_name_keeps_every_engine_table_there(production: str,
                                                            tmp_path: Path) -> None:
    difficulty_file = seed(production, tmp_path)

    out = every_command(production, tmp_path / "data", difficulty_file, schema_name="recon")

    check_outcome(out)
    where = execute(production, "SELECT DISTINCT n.nspname::text FROM pg_class c "
                                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE obj_description(c.oid, 'pg_class') LIKE 'engine:%'")
    assert where == [("recon",)]
    assert execute(production, "SELECT count(*) FROM pg_namespace WHERE nspname = 'engine'") == [(0,)]


@pytest.mark.parametrize("name", ["Engine", "public", "pg_engine", "engine; DROP TABLE x", "9x"])
def test_a_bad_schema_name_is_refused_before_anything_happens(name: str, production: str,
                                                              tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "init"], env={"ENGINE_DATABASE_URL": production,
                                                     "ENGINE_DATA_DIR": str(tmp_path),
                                                     "ENGINE_SCHEMA": name})

    assert result.exit_code == 2
    assert "ENGINE_SCHEMA" in result.stderr


def test_an_earlier_layout_in_public_is_moved_into_the_schema_with_every_row(
        database_url: str, server_url: str, tmp_path: Path) -> None:
    """The engine's tables as an earlier version left them in `public`: runs and progress as
    its first release made them (without the columns added since), difficulty and backfills
    as today's. `db init` moves them, rows, ids and sequences included, and adds the columns."""
    name = f"engine_old_{uuid.uuid4().hex[:12]}"
    with adbc.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    url = with_database(server_url, name)
    try:
        sections = schema.sections("engine")
        with adbc.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
            for table in (*schema.PRODUCTION_TABLES, *schema.ENGINE_TABLES):
                cursor.executescript(sections[table].replace('"engine".', ""))
            # A release between: the backfill and source columns, not the repair ones.
            cursor.executescript(sections["upgrade"].replace('"engine".', "").split(
                "-- Causes of drift")[0])
            cursor.executescript("""
                INSERT INTO bitcoin_difficulty VALUES ('2023-12-01', 1), ('2023-12-02', 2);
                INSERT INTO reconciliation_runs (month, command, formula, status)
                  VALUES ('2023-12', 'month', 'v1', 'verified'), ('2023-11', 'run', 'v1', 'failed');
                INSERT INTO reconciliation_progress (month, status, attempts)
                  VALUES ('2023-12', 'completed', 1);
                INSERT INTO reconciliation_backfills (command, status) VALUES ('run', 'completed');
            """)
        before = {t: execute(url, f"SELECT t::text FROM public.{t} t ORDER BY 1")
                  for t in schema.ENGINE_TABLES}

        result = schema.init_schema(url)

        assert sorted(line.split(" ")[0] for line in result.moved) == sorted(
            f"engine.{t}" for t in schema.ENGINE_TABLES)
        assert "engine.reconciliation_runs moved from public.reconciliation_runs with its 2 row(s)" \
            in result.moved
        assert result.created_tables == () and result.foreign == ()
        for table, rows in before.items():
            after = execute(url, f"SELECT t::text FROM engine.{table} t ORDER BY 1")
            if table in ("reconciliation_runs", "reconciliation_progress"):
                assert len(after) == len(rows)  # the added columns are null or their default
            else:
                assert after == rows
        assert execute(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                            "AND tablename = ANY($1)", (list(schema.ENGINE_TABLES),)) == [(0,)]
        run = execute(url, "INSERT INTO engine.reconciliation_runs (month, command, formula, status) "
                           "VALUES ('2024-01', 'month', 'v1', 'running') RETURNING id")
        assert run == [(3,)]  # the sequence moved with its table
        status = json.loads(cli(url, tmp_path, "status", "--json").stdout)
        assert status["last_run"]["id"] == 3
    finally:
        with adbc.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_load_aware_throttle_degrades_with_a_note_for_a_role_without_pg_read_all_stats(
        production: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    difficulty_file = seed(production, tmp_path)
    role_url = least_privilege(production)
    cli(role_url, tmp_path, "db", "init")
    cli(role_url, tmp_path, "difficulty", "load", str(difficulty_file))

    cli(role_url, tmp_path, "run", "--load-aware")

    notes = [r.getMessage() for r in caplog.records if "sees only" in r.getMessage()]
    assert len(notes) == 1 and "load-aware throttle sees only this role's own sessions" in notes[0]
    slower = [r for r in caplog.records if "which is slower" in r.getMessage()]
    assert len(slower) == 1


def test_a_password_in_the_password_file_serves_both_readers(database_url: str,
                                                             tmp_path: Path) -> None:
    """No password in the URL: libpq (ADBC) reads PGPASSFILE itself, and the engine hands
    connectorx the same password, so `engine month` extracts, loads and verifies."""
    from tests.conftest import PASSWORD_ROLE
    from tests.test_pipeline import seed_december

    seed_december(database_url)
    for grant in ("ALL ON ALL TABLES IN SCHEMA public", "ALL ON ALL SEQUENCES IN SCHEMA public",
                  "USAGE ON SCHEMA engine", "ALL ON ALL TABLES IN SCHEMA engine",
                  "ALL ON ALL SEQUENCES IN SCHEMA engine"):
        execute(database_url, f"GRANT {grant} TO {PASSWORD_ROLE}")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"# the test server\n127.0.0.1:*:*:{PASSWORD_ROLE}:right-password\n")
    passfile.chmod(0o600)
    url = database_url.replace("postgres@", f"{PASSWORD_ROLE}@")

    result = runner.invoke(app, ["month", "2023-12"], env={
        "ENGINE_DATABASE_URL": url, "ENGINE_DATA_DIR": str(tmp_path / "data"),
        "PGPASSFILE": str(passfile)})

    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout and "right-password" not in result.output


def test_the_password_file_is_read_as_libpq_reads_it(tmp_path: Path) -> None:
    from engine.store import libpq

    passfile = tmp_path / "pgpass"
    passfile.write_text("db.example:5432:other:app:nope\n"
                        "db.example:*:prod:app:se\\:cr\\\\et\n")
    passfile.chmod(0o600)
    env = {"PGPASSFILE": str(passfile), "PGSSLMODE": "verify-full"}

    url = libpq.for_connectorx("postgresql://app@db.example/prod?application_name=x", env)

    assert url == ("postgresql://app:se%3Acr%5Cet@db.example/prod?application_name=x"
                   "&sslmode=verify-full")
    assert libpq.for_connectorx("postgresql://app:given@db.example/prod?sslmode=disable", env) == \
        "postgresql://app:given@db.example/prod?sslmode=disable"
    passfile.chmod(0o644)  # libpq ignores a file others may read
    assert libpq.password_from_file("db.example", "5432", "prod", "app", env) is None
