"""Render results as text. Computes nothing new: every figure comes from a result object,
whose `to_dict()` is the JSON rendering of the same thing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `engine --help` need not import Polars and DuckDB
    from engine.demo import DemoResult
    from engine.month.reconcile import MonthResult
    from engine.operations.review import DiffReport, MonthDiff, UndoResult
    from engine.repairs.plans import RepairPlan
    from engine.store.difficulty import DifficultyLoad
    from engine.store.embedded import ServerStatus
    from engine.store.schema import InitResult

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
    if result.repairs:
        verb = "would fix" if result.status == "dry_run" else "fixed "
        lines.append(f"  {verb} " + _repairs(result.repairs))
    found = {k: rows[k] for k in ("drift", "orphans", "duplicates") if rows[k]}
    outstanding = result.verdict.outstanding if result.verdict else {
        k: v for k, v in found.items() if k not in result.fix}
    if outstanding:
        lines.append("  left   " + " · ".join(f"{k} {v:,}" for k, v in outstanding.items())
                     + "  (reported, not repaired)")
    if causes := _causes(result.causes):
        lines.append(f"  causes {causes}")
    if result.summaries:
        changes = result.summaries["changes"]
        lines.append(f"  summaries refreshed for {result.summaries['days']} day(s): " + " · ".join(
            f"{level} {sum(c.values()):,} changed" for level, c in changes.items()))
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
    if data.damage:
        lines.insert(1, f"damage      {_causes(data.damage)} (rows; `engine diff` finds them)")
    failed = [m for m in result.months if m.status == "unverified"]
    lines.extend(f"  {m.month} VERIFICATION FAILED" for m in failed)
    return "\n".join(lines)


def init_summary(result: InitResult) -> str:
    lines = [f"engine schema: {result.engine_schema}"]
    lines.extend(f"moved: {line}" for line in result.moved)
    lines.extend([
        "created tables: " + (", ".join(result.created_tables) or "none (all present)"),
        "created indexes: " + (", ".join(result.created_indexes) or "none"),
    ])
    lines.extend(f"not the engine's: {found.describe()}" for found in result.foreign)
    lines.extend(f"note: {note}" for note in result.notes)
    lines.extend(f"proposed: {statement}" for statement in result.proposed)
    if result.proposed:
        lines.append("  (`engine db init --create-indexes` runs the proposed statements; "
                     "the engine works without them)")
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
    where = f"embedded PostgreSQL in {status.pgdata}"
    if status.location:
        where += (f" (the cluster of {status.location}, which the server's user cannot reach; "
                  "its binaries are copied under /var/tmp)")
    if not status.running:
        return f"{where}: not running"
    return f"{where}: running (pid {status.pid}) on 127.0.0.1:{status.port}\nurl: {status.url}"


def difficulty_summary(result: DifficultyLoad) -> str:
    """`engine difficulty load`: the counts, then each replaced value (the first few)."""
    verbs = ("new", "to update", "unchanged") if result.dry_run else ("inserted", "updated",
                                                                      "unchanged")
    lines = [f"{result.dates:,} date(s) from {result.first} to {result.last}: "
             f"{result.inserted:,} {verbs[0]}, {result.updated:,} {verbs[1]}, "
             f"{result.unchanged:,} {verbs[2]}"]
    for change in result.changes:
        lines.append(f"  {change.settlement_date}  {change.old} → {change.new}")
    if result.updated > len(result.changes):
        lines.append(f"  … and {result.updated - len(result.changes):,} more changed value(s)")
    if result.dry_run:
        lines.append("dry run: nothing was written")
    return "\n".join(lines)


def diff_summary(report: DiffReport) -> str:
    """`engine diff`: per month the counts per class and cause, the summaries, a few rows."""
    lines = []
    for month in report.months:
        lines.extend(_month_diff(month))
    if len(report.months) > 1:
        totals = report.totals()
        lines.append(f"total    {len(report.months)} month(s) · " + " · ".join(
            f"{k} {totals[k]:,}" for k in ("missing", "drift", "orphans", "duplicates")))
        if causes := _causes(report.causes()):
            lines.append(f"causes   {causes}")
        if n := report.summaries_differ():
            lines.append(f"summaries differ in {n} month(s)")
    lines.append("exact: nothing differs" if report.exit_code == 0 else "differences found")
    return "\n".join(lines)


def _month_diff(month: MonthDiff) -> list[str]:
    c = month.counts
    head = "differs" if month.differs else "exact"
    lines = [f"{month.month}  {head}  expected {c['expected']:,} · present {c['present']:,} · "
             f"missing {c['missing']:,} · drift {c['drift']:,} · orphans {c['orphans']:,} · "
             f"duplicates {c['duplicates']:,}"]
    if causes := _causes(month.causes):
        lines.append(f"  causes     {causes}")
    if month.summaries is not None and not month.summaries.verified:
        lines.append(f"  summaries  {month.summaries.detail()}")
    for kind, rows in month.samples.items():
        for row in rows:
            lines.append(f"  {kind:<10} {_sample(kind, row)}")
    return lines


def _sample(kind: str, row: dict) -> str:
    key = (f"{row['settlement_date']} p{row['settlement_period']} {row['farm_id']} "
           f"{row['miner_model']}")
    ident = f"id {row['id']}  " if row.get("id") is not None else ""
    if kind == "missing":
        return f"{key}  {row['bitcoin_mined']} BTC"
    if kind == "drift":
        difficulty = ("" if row["difficulty"] == row["expected_difficulty"] else
                      f"  difficulty {row['difficulty']} → {row['expected_difficulty']}")
        return (f"{ident}{key}  {row['bitcoin_mined']} → {row['expected_bitcoin']} BTC"
                f"{difficulty}  {row['cause']}")
    if kind == "duplicates":
        keep = "keep" if row["keep"] else "drop"
        return f"{ident}{key}  {row['bitcoin_mined']} BTC ({keep})  {row['cause']}"
    return f"{ident}{key}  {row['bitcoin_mined']} BTC, no qualifying curtailment"


def plan_summary(plan: RepairPlan, path: object) -> str:
    counts = plan.counts()
    parts = [f"{action} {n:,} {kind}" for action, kinds in counts.items() for kind, n in kinds.items()]
    return (f"plan for {plan.month} (formula {plan.formula}, fix {', '.join(plan.fix) or 'none'}) "
            f"written to {path}\n"
            f"  {plan.rows.height:,} change(s): {' · '.join(parts) or 'nothing to change'}\n"
            f"  source {plan.fingerprint[:23]}…; `engine apply {path}` refuses if it changes")


def undo_summary(result: UndoResult) -> str:
    r = result.restored
    lines = [f"run {result.run_id} ({result.month}) undone by run {result.undo_run_id}: "
             f"{r.removed:,} inserted row(s) removed · {r.restored:,} updated row(s) restored · "
             f"{r.reinserted:,} deleted row(s) put back"]
    lines.append("  summaries " + ("verified" if result.summaries.verified
                                   else f"DIFFER: {result.summaries.detail()}"))
    return "\n".join(lines)


def _causes(counts: dict[str, int]) -> str:
    return " · ".join(f"{cause} {n:,}" for cause, n in counts.items() if n)


def _repairs(repairs: dict[str, dict[str, int]]) -> str:
    parts = [f"{kind} {n:,} {'updated' if action == 'updated' else 'deleted'}"
             for action, kinds in repairs.items() for kind, n in kinds.items()]
    return " · ".join(parts) or "nothing"
