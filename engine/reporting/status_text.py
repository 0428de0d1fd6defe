"""Render the operational objects (backfill, scheduled job, status, report, daily summary,
live view) as text, Markdown or a rich dashboard. Computes nothing new: every figure comes from
the object, whose `to_dict()` is the JSON rendering of the same thing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # annotations only: a renderer imports no pipeline
    from engine.operations.backfill import BackfillResult, Event
    from engine.operations.scheduled import ScheduledResult
    from engine.operations.selection import Plan
    from engine.reporting.backlog import BacklogReport, DailySummary
    from engine.reporting.live import LiveView
    from engine.reporting.status import Coverage, MonthStatus, Status

_SHOWN = 20  # rows of a list shown in text before "… and N more"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def coverage(c: Coverage) -> str:
    return f"{c.percent:.2f}% ({c.present:,} of {c.expected:,}, {c.missing:,} missing)"


# --- backfill and scheduled job -------------------------------------------------------------

def plan_line(plan: Plan, jobs: int) -> str:
    """The plan, printed before work starts."""
    if not plan.months:
        head = "plan: nothing to do"
    else:
        head = (f"plan: {len(plan.months)} month(s), order {plan.order}, {jobs} at a time: "
                + " ".join(str(m.month) for m in plan.months))
    if plan.left_out:
        head += "\n      left out: " + ", ".join(f"{n} {kind}" for kind, n in plan.left_out.items())
    return head


def backfill_summary(result: BackfillResult) -> str:
    if result.backfill_id is None:
        return "nothing to do: no month in the range matches the selection (see the plan)"
    counts = result.counts()
    lines = [
        f"backfill {result.backfill_id} finished: {counts['planned']} month(s) · "
        f"{counts['verified'] + counts['nothing_to_do']} verified · "
        f"{counts['failed'] + counts['unverified']} failed · {counts['skipped']} skipped"
        + (f" · {counts['not_reached']} not reached" if counts["not_reached"] else ""),
        f"rows     {counts['inserted']:,} inserted in {duration(result.seconds)} "
        f"({result.rows_per_second:,.0f} rows/s) · {counts['retries']} retr"
        f"{'y' if counts['retries'] == 1 else 'ies'}",
    ]
    updated = sum(o.rows.get("updated", 0) for o in result.outcomes)
    deleted = sum(o.rows.get("deleted", 0) for o in result.outcomes)
    if updated or deleted:
        lines.append(f"repaired {updated:,} row(s) updated · {deleted:,} deleted "
                     f"(`engine undo --backfill {result.backfill_id}` puts them back)")
    decisions = result.throttle.get("decisions", [])
    if decisions or result.throttle.get("waited_seconds"):
        lines.append(f"throttle {len(decisions)} decision(s), waited "
                     f"{duration(float(result.throttle.get('waited_seconds', 0)))}")
    for o in result.outcomes:
        if o.status in ("failed", "unverified", "skipped"):
            why = o.reason if o.status == "skipped" else f"{o.error_kind}: {o.error}"
            lines.append(f"  {o.month} {o.status.upper()} ({why})")
    return "\n".join(lines)


def scheduled_summary(result: ScheduledResult) -> str:
    if result.overlapped:
        return "another `engine scheduled` is running: nothing done"
    if not result.changes:
        return "nothing changed since the last verified runs: nothing to do"
    lines = [f"{len(result.changes)} month(s) due:"]
    lines += [f"  {c.month} {c.reason}: {c.detail}" for c in result.changes]
    if result.backfill:
        lines.append(backfill_summary(result.backfill))
    return "\n".join(lines)


def event_line(event: Event) -> str | None:
    """A plain log line for an event (no terminal: the dashboard's stand-in)."""
    if event.kind == "done" and event.outcome is not None:
        o = event.outcome
        if o.status in ("verified", "nothing_to_do", "unverified"):
            return (f"{o.month} {o.status} {o.inserted:,} inserted {o.seconds:.2f} s"
                    + (f" (try {o.tries})" if o.tries > 1 else ""))
        return f"{o.month} {o.status}: {o.reason or o.error}"
    if event.kind in ("retry", "takeover", "deferred") and event.month:
        return f"{event.month} {event.kind}: {event.detail}"
    if event.kind == "throttle" and event.decision is not None:
        d = event.decision
        return (f"throttle {d.action}{f' ({d.month})' if d.month else ''}: {d.reason} → "
                f"{d.jobs} at a time, pause {d.pause:.1f} s")
    return None


# --- live view ------------------------------------------------------------------------------

def live_line(view: LiveView) -> str:
    rate = f"{view.success_rate:.0f}%" if view.success_rate is not None else "–"
    return (f"{view.command} {view.backfill_id or ''} {view.state}: {view.done}/{view.months_total} "
            f"done · {len(view.running)} running · {view.failed} failed · {view.skipped} skipped · "
            f"{view.rows_inserted:,} rows ({view.rows_per_second:,.0f}/s) · success {rate}"
            + (f" · ETA {duration(view.eta_seconds)}" if view.state == "running" else ""))


def live_panel(view: LiveView) -> RenderableType:
    """The dashboard: counters, the months in progress, the latest events."""
    head = Table.grid(padding=(0, 2))
    for _ in range(4):
        head.add_column()
    rate = f"{view.success_rate:.0f}%" if view.success_rate is not None else "–"
    head.add_row(Text(f"{view.command} {view.backfill_id or ''}", style="bold"),
                 f"[{_state_style(view.state)}]{view.state}[/]", f"elapsed {duration(view.elapsed)}",
                 f"ETA {duration(view.eta_seconds)}" if view.state == "running" else "")
    head.add_row(f"done {view.done}/{view.months_total}", f"running {len(view.running)}",
                 f"[red]failed {view.failed}[/]" if view.failed else "failed 0",
                 f"skipped {view.skipped} · pending {view.pending}")
    head.add_row(f"rows {view.rows_inserted:,}", f"{view.rows_per_second:,.0f} rows/s",
                 f"success {rate}", f"retries {view.retries}")
    parts: list[RenderableType] = [head]
    if view.running:
        running = Table("month", "step", "for", box=None, padding=(0, 2), header_style="dim")
        for r in view.running:
            running.add_row(r.month, r.step or "…", duration(r.seconds))
        parts.append(running)
    if view.throttle:
        parts.append(Text(f"throttle {view.throttle}", style="yellow"))
    parts.extend(Text(line, style="dim") for line in view.recent)
    return Group(*parts)


def _state_style(state: str) -> str:
    return {"running": "cyan", "completed": "green", "failed": "red"}.get(state, "yellow")


# --- status ---------------------------------------------------------------------------------

def status_text(status: Status) -> str:
    lines = [f"reconciled  {coverage(status.overall)}"]
    lines.append("by year     " + " · ".join(f"{y} {c.percent:.2f}%" for y, c in status.by_year.items()))
    lines.append("by model    " + " · ".join(f"{m} {c.percent:.2f}%" for m, c in status.by_model.items()))
    lines.append(f"months      {len(status.months)} · " + " · ".join(
        f"{n} {name.replace('_', ' ')}" for name, n in status.months_by_status.items()))
    if status.last_run:
        r = status.last_run
        lines.append(f"last run    {r.id} ({r.month}, {r.command}) {r.status} at "
                     f"{_when(r.finished_at or r.started_at)}")
    if status.last_backfill:
        b = status.last_backfill
        lines.append(f"backfill    {b.id} ({b.command}) {b.state}: {b.verified} verified · "
                     f"{b.failed} failed · {b.skipped} skipped of {b.months} · {b.inserted:,} rows, "
                     f"started {_when(b.started_at)}")
    todo = [m for m in status.months if m.status != "completed" or m.coverage.missing]
    for m in todo[:_SHOWN]:
        error = f" · {m.last_error}" if m.last_error and m.status == "failed" else ""
        lines.append(f"  {m.month} {m.status:<11} {m.coverage.percent:6.2f}% "
                     f"{m.coverage.missing:>9,} missing{error}")
    lines.extend(_more(todo))
    return "\n".join(lines)


def month_status_text(status: MonthStatus) -> str:
    line = status.line
    lines = [f"{status.month}  {line.status}  {coverage(line.coverage)}  attempts {line.attempts}"]
    if line.last_error:
        lines.append(f"  last error ({line.last_error_kind or 'error'}): {line.last_error}")
    if status.last_run:
        r = status.last_run
        lines.append(f"  last run {r.id} ({r.command}) {r.status} at {_when(r.finished_at or r.started_at)}")
    models = list(status.by_model)
    lines.append("  by model  " + " · ".join(f"{m} {c.percent:.2f}%" for m, c in status.by_model.items()))
    incomplete = sum(not d.complete for d in status.days)
    lines.append(f"  {len(status.days)} day(s) with curtailment, {incomplete} incomplete")
    lines.append("  date        periods  expected  " + "  ".join(f"{m:>9}" for m in models)
                 + "   (missing per model)")
    for day in status.days:
        missing = "  ".join(f"{day.missing[m]:>9,}" for m in models)
        lines.append(f"  {day.day}  {day.periods:>7}  {day.expected:>8,}  {missing}"
                     + ("" if day.complete else "   incomplete"))
    return "\n".join(lines)


# --- report ---------------------------------------------------------------------------------

def report_text(report: BacklogReport) -> str:
    est = report.estimate
    lines = [f"remaining   {report.overall.missing:,} row(s) missing in "
             f"{len(report.months)} month(s), {len(report.days)} day(s) · "
             f"{coverage(report.overall)}",
             f"estimate    {_estimate(report)}"]
    if report.months:
        lines.append("months, worst first:")
        lines += [f"  {m.month} {m.status:<11} {m.coverage.missing:>9,} missing of "
                  f"{m.coverage.expected:,}" for m in report.months[:_SHOWN]]
        lines.extend(_more(report.months))
    if report.days:
        lines.append("days, worst first:")
        lines += [f"  {d.day} {d.coverage.missing:>7,} missing of {d.coverage.expected:,}"
                  for d in report.days[:_SHOWN]]
        lines.extend(_more(report.days))
    if report.failures:
        lines.append("failures:")
        lines += [f"  {f.month} after {f.attempts} attempt(s) ({f.last_error_kind or 'error'}): "
                  f"{f.last_error}" for f in report.failures]
    if est.basis_runs == 0:
        lines.append("(no verified run yet to measure the speed from)")
    return "\n".join(lines)


def report_markdown(report: BacklogReport) -> str:
    est = report.estimate
    out = [f"# Reconciliation report, {_when(report.generated_at)}", "",
           f"- **Reconciled:** {coverage(report.overall)}",
           f"- **Remaining:** {report.overall.missing:,} rows in {len(report.months)} month(s) "
           f"and {len(report.days)} day(s)",
           f"- **Estimate:** {_estimate(report)} (from {est.basis_runs} run(s))", ""]
    out += ["## Remaining months, worst first", ""]
    out += _md_table(("month", "status", "expected", "present", "missing", "%"),
                     [(str(m.month), m.status, f"{m.coverage.expected:,}", f"{m.coverage.present:,}",
                       f"{m.coverage.missing:,}", f"{m.coverage.percent:.2f}") for m in report.months])
    out += ["", "## Remaining days, worst first", ""]
    out += _md_table(("date", "expected", "missing"),
                     [(str(d.day), f"{d.coverage.expected:,}", f"{d.coverage.missing:,}")
                      for d in report.days])
    out += ["", "## Failures", ""]
    out += _md_table(("month", "attempts", "kind", "error"),
                     [(str(f.month), str(f.attempts), f.last_error_kind or "error",
                       _md_cell(f.last_error or "")) for f in report.failures])
    out += ["", "## Recent backfills", ""]
    out += _md_table(("id", "command", "status", "months", "verified", "failed", "rows", "started"),
                     [(str(b.id), b.command, b.state, str(b.months), str(b.verified), str(b.failed),
                       f"{b.inserted:,}", _when(b.started_at)) for b in report.backfills])
    return "\n".join(out) + "\n"


def daily_markdown(summary: DailySummary) -> str:
    totals = summary.totals()
    out = [f"# Runs of {summary.day}", "",
           f"- **Runs:** {totals['runs']} over {totals['months']} month(s): " + ", ".join(
               f"{n} {s}" for s, n in totals["by_status"].items()),
           f"- **Rows inserted:** {totals['inserted']:,}",
           f"- **Time reconciling:** {duration(totals['seconds'])}", "", "## Backfills", ""]
    out += _md_table(("id", "command", "status", "months", "verified", "failed", "skipped", "rows",
                      "retries"),
                     [(str(b.id), b.command, b.state, str(b.months), str(b.verified), str(b.failed),
                       str(b.skipped), f"{b.inserted:,}", str(b.retries)) for b in summary.backfills])
    out += ["", "## Runs by month", ""]
    out += _md_table(("month", "status", "runs", "inserted", "seconds"),
                     [(r.month, r.status, str(r.runs), f"{r.inserted:,}", f"{r.seconds:.2f}")
                      for r in summary.runs])
    out += ["", "## Failures", ""]
    out += _md_table(("run", "month", "command", "error"),
                     [(str(f[0]), f[1], f[2], _md_cell(f[3] or "")) for f in summary.failures])
    return "\n".join(out) + "\n"


def _estimate(report: BacklogReport) -> str:
    est = report.estimate
    if est.remaining_months == 0:
        return "nothing left to do"
    if est.seconds is None:
        return "unknown (no measured runs yet)"
    return (f"≈ {duration(est.seconds)} at {est.jobs} job(s) (≈ {duration(est.sequential_seconds)} "
            f"one month at a time; measured speed-up {est.speedup:.1f}×)")


def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = list(rows)
    if not rows:
        return ["none"]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _more(items: Sequence[object]) -> list[str]:
    return [f"  … and {len(items) - _SHOWN} more (--json lists all)"] if len(items) > _SHOWN else []


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if moment else "never"
