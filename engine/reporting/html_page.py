"""`engine report --html`: one self-contained HTML page of where the history stands.

Pure: it renders the same `Status` and `BacklogReport` objects as the text, Markdown and JSON
outputs. The charts are Vega-Lite specifications built with Altair and rendered to inline SVG
by vl-convert, so the page needs no script, no network and no file beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING

import altair as alt
import polars as pl
import vl_convert as vlc

if TYPE_CHECKING:  # annotations only: a renderer imports no pipeline
    from engine.reporting.backlog import BacklogReport
    from engine.reporting.status import Coverage, Status
from engine.reporting.status_text import duration

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933;
       margin: 2rem auto; max-width: 1180px; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; font-size: 1.2rem; }
.when { color: #616e7c; margin-top: 0; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { border: 1px solid #d9e2ec; border-radius: 6px; padding: .7rem 1rem; min-width: 9rem; }
.card b { display: block; font-size: 1.4rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border-bottom: 1px solid #e4e7eb; padding: .25rem .7rem; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f5f7fa; }
.charts { display: flex; gap: 2rem; flex-wrap: wrap; align-items: flex-start; }
.none { color: #616e7c; font-style: italic; }
"""
_SHOWN = 15  # rows of the long tables; the JSON output lists them all


def render(status: Status, report: BacklogReport) -> str:
    """The whole page."""
    overall = status.overall
    cards = [("reconciled", f"{overall.percent:.2f}%"), ("expected rows", f"{overall.expected:,}"),
             ("present", f"{overall.present:,}"), ("missing", f"{overall.missing:,}"),
             ("time left", _estimate(report))]
    body = [
        "<h1>Reconciliation report</h1>",
        f'<p class="when">historical_bitcoin_calculations against curtailment_records · '
        f"generated {escape(report.generated_at.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p>",
        '<div class="cards">' + "".join(
            f'<div class="card">{escape(label)}<b>{escape(value)}</b></div>' for label, value in cards)
        + "</div>",
        "<h2>Coverage per year</h2>",
        '<div class="charts">' + _coverage_table("year", status.by_year)
        + _svg(_percent_chart(status.by_year, "year")) + "</div>",
        "<h2>Coverage per miner model</h2>",
        _coverage_table("miner model", status.by_model),
        "<h2>Missing rows by day</h2>",
        "<p>Each cell is one day: the rows missing over every miner model (white: none).</p>",
        _svg(_heatmap(status, report)),
        "<h2>Missing rows per month</h2>",
        _svg(_monthly_chart(status)),
        "<h2>Months by status</h2>",
        _table(("status", "months"), [(s, f"{n:,}") for s, n in status.months_by_status.items()]),
        "<h2>Remaining months, worst first</h2>",
        _table(("month", "status", "expected", "present", "missing", "%"),
               [(str(m.month), m.status, f"{m.coverage.expected:,}", f"{m.coverage.present:,}",
                 f"{m.coverage.missing:,}", f"{m.coverage.percent:.2f}")
                for m in report.months[:_SHOWN]], more=len(report.months)),
        "<h2>Remaining days, worst first</h2>",
        _table(("date", "expected", "missing"),
               [(str(d.day), f"{d.coverage.expected:,}", f"{d.coverage.missing:,}")
                for d in report.days[:_SHOWN]], more=len(report.days)),
        "<h2>Failures</h2>",
        _table(("month", "attempts", "kind", "error"),
               [(str(f.month), str(f.attempts), f.last_error_kind or "error", f.last_error or "")
                for f in report.failures]),
        "<h2>Recent backfills</h2>",
        _table(("id", "command", "status", "months", "verified", "failed", "rows inserted"),
               [(str(b.id), b.command, b.state, str(b.months), str(b.verified), str(b.failed),
                 f"{b.inserted:,}") for b in report.backfills]),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Reconciliation report</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _estimate(report: BacklogReport) -> str:
    est = report.estimate
    if est.remaining_months == 0:
        return "none"
    return "unknown" if est.seconds is None else f"≈ {duration(est.seconds)}"


def _coverage_table(label: str, coverage: dict[str, Coverage]) -> str:
    return _table((label, "expected", "present", "missing", "%"),
                  [(name, f"{c.expected:,}", f"{c.present:,}", f"{c.missing:,}", f"{c.percent:.2f}")
                   for name, c in coverage.items()])


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *, more: int = 0) -> str:
    rows = list(rows)
    if not rows:
        return '<p class="none">none</p>'
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    lines = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
    for row in rows:
        lines.append("<tr>" + "".join(
            f'<td{" class=text" if not _numeric(v) else ""}>{escape(v)}</td>' for v in row) + "</tr>")
    lines.append("</tbody></table>")
    if more > len(rows):
        lines.append(f'<p class="none">… and {more - len(rows):,} more (<code>engine report '
                     "--json</code> lists all)</p>")
    return "".join(lines)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").isdigit()


def _percent_chart(coverage: dict[str, Coverage], label: str) -> alt.Chart:
    frame = pl.DataFrame({label: list(coverage), "percent": [c.percent for c in coverage.values()]},
                         schema={label: pl.String, "percent": pl.Float64})
    return alt.Chart(frame, title="Percent reconciled").mark_bar(color="#3e7cb1").encode(
        x=alt.X(f"{label}:N", title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("percent:Q", scale=alt.Scale(domain=[0, 100]), title="% of expected rows present"),
        tooltip=[label, "percent"],
    ).properties(width=60 * max(len(coverage), 3), height=220)


def _heatmap(status: Status, report: BacklogReport) -> alt.Chart:
    """Day of month × month, coloured by the rows missing that day."""
    months = sorted(str(m.month) for m in status.months)
    frame = pl.DataFrame(  # only days with missing rows are listed: the others stay white
        {"month": [f"{d.day:%Y-%m}" for d in report.days], "day": [d.day.day for d in report.days],
         "missing": [d.coverage.missing for d in report.days]},
        schema={"month": pl.String, "day": pl.Int32, "missing": pl.Int64})
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("day:O", title="day of month", scale=alt.Scale(domain=list(range(1, 32)))),
        y=alt.Y("month:O", title=None, sort="descending", scale=alt.Scale(domain=months[::-1])),
        color=alt.Color("missing:Q", title="rows missing", scale=alt.Scale(scheme="orangered")),
        tooltip=["month", "day", "missing"],
    ).properties(width=31 * 22, height=max(14 * len(months), 60))


def _monthly_chart(status: Status) -> alt.Chart:
    frame = pl.DataFrame(
        {"month": [str(m.month) for m in status.months],
         "year": [str(m.month.year) for m in status.months],
         "present": [m.coverage.present for m in status.months],
         "missing": [m.coverage.missing for m in status.months]},
        schema={"month": pl.String, "year": pl.String, "present": pl.Int64, "missing": pl.Int64})
    long = frame.unpivot(["present", "missing"], index=["month", "year"], variable_name="rows",
                         value_name="count")
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("month:O", title=None),
        y=alt.Y("count:Q", title="rows", stack=True),
        color=alt.Color("rows:N", scale=alt.Scale(domain=["present", "missing"],
                                                  range=["#9fb3c8", "#d64545"])),
        tooltip=["month", "rows", "count"],
    ).properties(width=22 * max(len(status.months), 4), height=220)


def _svg(chart: alt.Chart) -> str:
    return vlc.vegalite_to_svg(chart.to_json())
