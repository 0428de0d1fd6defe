"""Render results as text. Computes nothing new: every figure comes from a result object,
whose `to_dict()` is the JSON rendering of the same thing."""

from __future__ import annotations

from engine.demo import DemoResult
from engine.difficulty import DifficultyLoad
from engine.embedded import ServerStatus
from engine.pipeline import MonthResult
from engine.schema import InitResult

STEPS = ("extract", "recompute", "diff", "load", "verify", "record")


def month_summary(result: MonthResult) -> str:
    rows = result.rows
    if result.status == "nothing_to_do":
        return f"{result.month}  no curtailment and no calculations: nothing to do"
    head = {
        "verified": "verified",
        "unverified": "VERIFICATION FAILED",
        "dry_run": "dry run, nothing written",
    }[result.status]
    run = f"  (run {result.run_id})" if result.run_id else ""
    lines = [f"{result.month}  {head}{run}  {result.seconds:.2f} s"]
    if result.status == "dry_run":
        lines.append(f"  rows   expected {rows['expected']:,} · present {rows['present_before']:,}"
                     f" · would insert {rows['missing_before']:,}")
    else:
        inserted = f"inserted {rows['inserted']:,}"
        if rows["inserted"] == 0:
            inserted = "inserted 0 (nothing was missing)"
        lines.append(f"  rows   expected {rows['expected']:,} · present before "
                     f"{rows['present_before']:,} · {inserted} · verified {rows['verified']:,}")
        if rows["already_present"]:
            lines.append(f"         {rows['already_present']:,} row(s) were inserted by another "
                         "writer during the run")
    outstanding = {k: rows[k] for k in ("drift", "orphans", "duplicates") if rows[k]}
    if outstanding:
        lines.append("  left   " + " · ".join(f"{k} {v:,}" for k, v in outstanding.items())
                     + "  (reported, not repaired)")
    lines.append("  steps  " + " · ".join(
        f"{step} {result.timings[step]:.2f} s" for step in STEPS if step in result.timings))
    if result.verdict and not result.verdict.verified:
        lines.extend(f"  failed {check.name}: {check.detail}" for check in result.verdict.failed)
    return "\n".join(lines)


def demo_summary(result: DemoResult) -> str:
    data, totals = result.data, result.totals()
    statuses = [m.status for m in result.months]
    verified = statuses.count("verified")
    lines = [
        f"demo data   {data.curtailment_records:,} curtailment records · "
        f"{data.expected_rows:,} expected rows · {data.present_rows:,} present "
        f"({data.seconds:.1f} s)",
        f"reconciled  {len(result.months)} months · {verified} verified · "
        f"{totals['inserted']:,} rows inserted · {totals['verified']:,} verified",
        f"time        {result.seconds:.1f} s in all, "
        f"{sum(m.seconds for m in result.months):.1f} s reconciling",
    ]
    failed = [m for m in result.months if m.status == "unverified"]
    lines.extend(f"  {m.month} VERIFICATION FAILED" for m in failed)
    return "\n".join(lines)


def init_summary(result: InitResult) -> str:
    lines = [
        "created tables: " + (", ".join(result.created_tables) or "none (all present)"),
        "created indexes: " + (", ".join(result.created_indexes) or "none (all present)"),
    ]
    if result.unique_key == "blocked":
        lines.append(
            f"the unique key index could not be built: {result.duplicate_keys:,} key(s) are "
            f"duplicated ({result.surplus_rows:,} surplus row(s)). Remove the surplus rows "
            "(keep one row per settlement_date, settlement_period, farm_id, miner_model), "
            "then run `engine db init` again. Until then the engine locks the table while "
            "it merges, so it never adds a duplicate."
        )
    else:
        lines.append(f"unique key index: {result.unique_key}")
    return "\n".join(lines)


def server_summary(status: ServerStatus) -> str:
    if not status.running:
        return f"embedded PostgreSQL in {status.pgdata}: not running"
    return (f"embedded PostgreSQL in {status.pgdata}: running (pid {status.pid}) "
            f"on 127.0.0.1:{status.port}\nurl: {status.url}")


def difficulty_summary(result: DifficultyLoad) -> str:
    return (f"{result.dates:,} date(s) from {result.first} to {result.last}: "
            f"{result.inserted:,} inserted, {result.updated:,} updated, "
            f"{result.unchanged:,} unchanged")
