-- The tables, one section each (`-- table: NAME`). `engine db init` creates a table only
-- where it is missing, marks it as the engine's with a table comment, and never drops or
-- rewrites anything. `{engine}` is the engine's own schema (validated and quoted by
-- engine.store.schema.sql).

-- The production tables, as production has them: created only on a database the engine owns
-- (the embedded one, the demo's) or when asked to.

-- table: curtailment_records
CREATE TABLE curtailment_records (
    id serial PRIMARY KEY,
    settlement_date date NOT NULL,
    settlement_period integer NOT NULL,
    farm_id text NOT NULL,
    lead_party_name text,
    volume numeric NOT NULL,
    payment numeric NOT NULL,
    original_price numeric NOT NULL,
    final_price numeric NOT NULL,
    so_flag boolean,
    cadl_flag boolean,
    created_at timestamp DEFAULT now()
);

-- table: historical_bitcoin_calculations
CREATE TABLE historical_bitcoin_calculations (
    id serial PRIMARY KEY,
    settlement_date date NOT NULL,
    settlement_period integer NOT NULL,
    farm_id text NOT NULL,
    miner_model text NOT NULL,
    bitcoin_mined numeric NOT NULL,
    difficulty numeric NOT NULL,
    calculated_at timestamp DEFAULT now()
);

-- table: bitcoin_daily_summaries
CREATE TABLE bitcoin_daily_summaries (
    id serial PRIMARY KEY,
    summary_date date NOT NULL,
    miner_model text NOT NULL,
    bitcoin_mined numeric NOT NULL,
    created_at timestamp DEFAULT now(),
    updated_at timestamp DEFAULT now()
);

-- table: bitcoin_monthly_summaries
CREATE TABLE bitcoin_monthly_summaries (
    id serial PRIMARY KEY,
    year_month text NOT NULL,
    miner_model text NOT NULL,
    bitcoin_mined numeric NOT NULL,
    created_at timestamp DEFAULT now(),
    updated_at timestamp DEFAULT now()
);

-- table: bitcoin_yearly_summaries
CREATE TABLE bitcoin_yearly_summaries (
    id serial PRIMARY KEY,
    year text NOT NULL,
    miner_model text NOT NULL,
    bitcoin_mined numeric NOT NULL,
    created_at timestamp DEFAULT now(),
    updated_at timestamp DEFAULT now()
);

-- The engine's own tables, in its own schema.

-- table: bitcoin_difficulty
CREATE TABLE {engine}.bitcoin_difficulty (
    settlement_date date PRIMARY KEY,
    difficulty numeric NOT NULL
);

-- table: reconciliation_runs
CREATE TABLE {engine}.reconciliation_runs (
    id bigserial PRIMARY KEY,
    month text NOT NULL,
    command text NOT NULL,
    formula text NOT NULL,
    dry_run boolean NOT NULL DEFAULT false,
    status text NOT NULL
        CHECK (status IN ('running', 'loaded', 'verified', 'unverified', 'failed', 'nothing_to_do',
                          'interrupted')),
    arguments jsonb NOT NULL DEFAULT '{}',
    rows jsonb,
    timings jsonb,
    verdict jsonb,
    error text,
    pid integer,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- table: reconciliation_progress
CREATE TABLE {engine}.reconciliation_progress (
    month text PRIMARY KEY,
    status text NOT NULL
        CHECK (status IN ('not_started', 'in_progress', 'completed', 'failed', 'interrupted',
                          'regressed')),
    expected_rows bigint,
    present_rows bigint,
    inserted_rows bigint,
    missing_rows bigint,
    drift_rows bigint,
    orphan_rows bigint,
    duplicate_rows bigint,
    percent_complete numeric(6, 2),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    last_run_id bigint,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- table: reconciliation_backfills
-- One row per `engine run` / `engine scheduled`: its plan, counts and throttle decisions.
CREATE TABLE {engine}.reconciliation_backfills (
    id bigserial PRIMARY KEY,
    command text NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
    arguments jsonb NOT NULL DEFAULT '{}',
    plan jsonb NOT NULL DEFAULT '[]',
    jobs integer NOT NULL DEFAULT 1,
    months_verified integer NOT NULL DEFAULT 0,
    months_failed integer NOT NULL DEFAULT 0,
    months_skipped integer NOT NULL DEFAULT 0,
    rows_inserted bigint NOT NULL DEFAULT 0,
    retries integer NOT NULL DEFAULT 0,
    throttle jsonb NOT NULL DEFAULT '{}',
    error text,
    pid integer,
    host text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- table: reconciliation_fingerprints
-- What each day of a verified month held: rows and the sum of their hashes, for the source and
-- the calculations (`engine.month.fingerprints`); `engine status --check` compares them.
CREATE TABLE {engine}.reconciliation_fingerprints (
    kind text NOT NULL CHECK (kind IN ('source', 'calculations')),
    settlement_date date NOT NULL,
    month text NOT NULL,
    rows bigint NOT NULL,
    hash numeric NOT NULL,
    run_id bigint,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, settlement_date)
);
CREATE INDEX reconciliation_fingerprints_month_idx ON {engine}.reconciliation_fingerprints (month);

-- upgrade
-- Columns and indexes of the run and progress tables added since the first release; `ADD
-- COLUMN IF NOT EXISTS` brings a table created by it (or moved from `public`) up to date. Run
-- after the engine created or moved one of its tables, or when one lacks a column.
-- The backfill a run belongs to.
ALTER TABLE {engine}.reconciliation_runs ADD COLUMN IF NOT EXISTS backfill_id bigint;
CREATE INDEX IF NOT EXISTS reconciliation_runs_backfill_idx ON {engine}.reconciliation_runs (backfill_id);
CREATE INDEX IF NOT EXISTS reconciliation_runs_started_idx ON {engine}.reconciliation_runs (started_at);
-- What the source held when the month was last verified: the scheduled job compares it.
ALTER TABLE {engine}.reconciliation_progress ADD COLUMN IF NOT EXISTS source_records bigint;
ALTER TABLE {engine}.reconciliation_progress ADD COLUMN IF NOT EXISTS source_max_id bigint;
ALTER TABLE {engine}.reconciliation_progress ADD COLUMN IF NOT EXISTS source_max_created_at timestamp;
ALTER TABLE {engine}.reconciliation_progress ADD COLUMN IF NOT EXISTS source_volume numeric;
-- transient | data | schema | input | error | verification: what kind `last_error` was.
ALTER TABLE {engine}.reconciliation_progress ADD COLUMN IF NOT EXISTS last_error_kind text;
ALTER TABLE {engine}.reconciliation_progress ADD COLUMN IF NOT EXISTS last_error_at timestamptz;
ALTER TABLE {engine}.reconciliation_progress ADD COLUMN IF NOT EXISTS retries integer NOT NULL DEFAULT 0;

-- Causes of drift, repairs, summaries refreshed, and undo, per run.
ALTER TABLE {engine}.reconciliation_runs ADD COLUMN IF NOT EXISTS causes jsonb;
ALTER TABLE {engine}.reconciliation_runs ADD COLUMN IF NOT EXISTS repairs jsonb;
ALTER TABLE {engine}.reconciliation_runs ADD COLUMN IF NOT EXISTS summaries jsonb;
-- An undo is a run of its own (command 'undo') that names the run it undid, and that run
-- names it back; a run is undone at most once.
ALTER TABLE {engine}.reconciliation_runs ADD COLUMN IF NOT EXISTS undo_of bigint;
ALTER TABLE {engine}.reconciliation_runs ADD COLUMN IF NOT EXISTS undone_by bigint;
-- Which state of the database the month was computed from (per table: rows, days, Σ hash).
ALTER TABLE {engine}.reconciliation_runs ADD COLUMN IF NOT EXISTS snapshot jsonb;
-- Which process ran the month (host:pid/thread, or a cluster worker's address).
ALTER TABLE {engine}.reconciliation_runs ADD COLUMN IF NOT EXISTS worker text;

-- A run or a month stopped by a signal is `interrupted`, a month whose calculations changed
-- after it was verified `regressed` (both added later): widen the status checks of tables
-- created before, once.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'reconciliation_runs_status_check'
               AND conrelid = '{engine}.reconciliation_runs'::regclass
               AND pg_get_constraintdef(oid) NOT LIKE '%interrupted%') THEN
        ALTER TABLE {engine}.reconciliation_runs DROP CONSTRAINT reconciliation_runs_status_check,
            ADD CONSTRAINT reconciliation_runs_status_check CHECK (status IN ('running', 'loaded',
                'verified', 'unverified', 'failed', 'nothing_to_do', 'interrupted'));
    END IF;
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'reconciliation_progress_status_check'
               AND conrelid = '{engine}.reconciliation_progress'::regclass
               AND pg_get_constraintdef(oid) NOT LIKE '%regressed%') THEN
        ALTER TABLE {engine}.reconciliation_progress DROP CONSTRAINT reconciliation_progress_status_check,
            ADD CONSTRAINT reconciliation_progress_status_check CHECK (status IN ('not_started',
                'in_progress', 'completed', 'failed', 'interrupted', 'regressed'));
    END IF;
END $$;
