"""Render the benchmark results as Markdown and put them into RESULTS.md between markers,
leaving what is written around them alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.run import Figure, Results

BEGIN = "<!-- benchmarks:begin (written by `uv run python -m benchmarks`; edit outside) -->"
END = "<!-- benchmarks:end -->"
STEPS = ("extract", "recompute", "diff", "load", "verify", "record")

# (figure, compared with, what the ratio says, the target it must not exceed or None)
RATIOS: tuple[tuple[str, str, str, float | None], ...] = (
    ("engine_backlog", "sql_backlog", "engine / in-database SQL, backlog, unique index", 1.0),
    ("engine_backlog", "sql_backlog_no_index", "engine / in-database SQL, backlog, no index", 1.0),
    ("engine_empty", "sql_empty", "engine / in-database SQL, from empty, unique index", 1.0),
    ("engine_backlog", "original_all", "engine (backlog) / original approach, no pauses", 0.01),
    ("engine_backlog", "original_all_paused", "engine (backlog) / original approach with its pauses",
     0.01),
    ("engine_empty", "original_all", "engine (from empty) / original approach, no pauses", 0.01),
    ("engine_run_backlog", "sql_backlog", "`engine run --jobs 3` / in-database SQL, backlog, "
     "unique index", 1.0),
    ("engine_run_backlog", "original_all", "`engine run --jobs 3` (backlog) / original approach, "
     "no pauses", 0.01),
    ("engine_run_backlog", "original_all_paused", "`engine run --jobs 3` (backlog) / original "
     "approach with its pauses", 0.01),
    ("engine_empty", "floor", "engine (from empty) / floor (COPY + connectorx read)", 3.0),
    ("engine_run_empty", "floor", "`engine run --jobs 3` (from empty) / floor", 3.0),
    ("engine_empty", "floor_indexed", "engine (from empty) / floor with the unique index", None),
    ("engine_run_empty", "floor_production", "`engine run --jobs 3` (from empty) / floor into a "
     "production-shaped table", None),
)


def render(results: Results) -> str:
    f, d, m = results.figures, results.data, results.machine
    load = ", ".join(f"{x:.2f}" for x in m["load_before"]) if m.get("load_before") else "n/a"
    lines = [
        BEGIN,
        "## The engine against the alternatives",
        "",
        f"Measured {m['when']} by `uv run python -m benchmarks` on {m['system']}, "
        f"{m['cpus']} CPU(s), Python {m['python']}, load average before the run {load}; "
        f"the whole run took {results.seconds:.0f} s. Months {results.args['months']}: "
        f"{d['curtailment_records']:,} curtailment records, {d['expected_rows']:,} expected rows, "
        f"{d['present_rows']:,} calculation rows in the production-shaped backlog (a few "
        "drifted and orphan rows among them). Single month: "
        f"{results.args['month']}.",
        "",
        "*work* is the time the workload measured itself (its statements, or the engine's months "
        "from opening the session), *wall* the whole process including Python's start and "
        "imports; *peak RSS* is the client process's (`wait4`), the PostgreSQL server's memory "
        "is not in it.",
        "",
        "| what | start | rows written | work (s) | wall (s) | rows/s | peak RSS (MB) | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    order = ("engine_month", "engine_backlog", "engine_empty", "engine_run_backlog",
             "engine_run_empty", "engine_diff", "sql_backlog",
             "sql_backlog_no_index", "sql_empty", "original_month", "original_all",
             "original_all_paused", "floor_copy", "floor_copy_indexed", "floor_copy_production",
             "floor_read")
    lines += [_row(f[key]) for key in order if key in f]
    if "floor_copy" in f and "floor_read" in f:
        floor = f["floor_copy"].work + f["floor_read"].work
        lines.append(f"| floor: COPY + read | | | {floor:.2f} | | | | the engine's lower bound |")
    repeat = results.args.get("repeat", 1)
    if repeat > 1:
        lines += ["", f"Each engine, SQL and floor figure is the fastest of {repeat} runs."]

    lines += ["", "### The engine's time by step (s)", "",
              "| run | " + " | ".join(STEPS) + " | sum |", "|---|" + "---:|" * (len(STEPS) + 1)]
    for key in ("engine_month", "engine_backlog", "engine_empty"):
        if key in f:
            steps = f[key].detail["steps"]
            lines.append(f"| {f[key].name}, {f[key].start} | "
                         + " | ".join(f"{steps.get(s, 0.0):.2f}" for s in STEPS)
                         + f" | {sum(steps.values()):.2f} |")
    if "original_month" in f:
        t = f["original_month"].detail["steps"]
        lines += ["", f"The original approach's month: select {t['select']:.2f} s, compute "
                  f"{t['compute']:.2f} s, delete {t['delete']:.2f} s, insert {t['insert']:.2f} s; "
                  f"its pauses would add {f['original_month'].detail['pauses']:.0f} s."]

    lines += ["", "### Ratios (engine time ÷ the other's; below 1 the engine is faster)", "",
              "| ratio | value | the other takes | target | |", "|---|---:|---:|---:|---|"]
    for ours, theirs, label, target in RATIOS:
        ratio = _ratio(f, ours, theirs)
        if ratio is None:
            continue
        if target is None:
            lines.append(f"| {label} | {ratio:.3f} | {1 / ratio:.1f}× | – | for reference |")
            continue
        verdict = "met" if ratio <= target else "**missed**"
        bound = f"≤ {target:g}" if target != 1.0 else "< 1"
        lines.append(f"| {label} | {ratio:.3f} | {1 / ratio:.1f}× | {bound} | {verdict} |")
    peak = max((x.peak_mb for k, x in f.items() if k.startswith("engine") and x.peak_mb), default=0)
    lines.append(f"| engine's peak memory (MB) | {peak:.0f} | | < 1024 | "
                 f"{'met' if peak < 1024 else '**missed**'} |")

    lines += ["", "### Do they write the same rows?", "",
              "Each table compared with the engine's after the same start (the original "
              "approach's month with the expected rows). *values differ*: any difference; "
              "*beyond 2e-8*: more than two rounding steps.", "",
              "| compared | rows | only reference | only other | duplicate keys | values differ "
              "| beyond 2e-8 | largest difference |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, check in results.checks.items():
        label = f[key].name + f", {f[key].start}" + (f" ({f[key].note})" if f[key].note else "") \
            if key in f else key
        if key == "original":
            label = f"original approach, {results.args['month']}, vs the expected rows"
        lines.append(f"| {label} | {check['rows']:,} | {check['only_reference']:,} | "
                     f"{check['only_other']:,} | {check['duplicate_keys']:,} | {check['differing']:,} "
                     f"| {check['beyond_tolerance']:,} | {check['max_difference']:.2e} |")
    if results.args.get("profile"):
        lines += ["", f"Profile of the engine (36 months from empty): `{results.args['profile']}`."]
    lines.append(END)
    return "\n".join(lines)


def write_results(path: Path, markdown: str) -> None:
    """Replace the text between the markers in `path` (append it if there are none)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + markdown + tail
    else:
        text = text.rstrip("\n") + "\n\n" + markdown + "\n"
    path.write_text(text)


def _row(x: Figure) -> str:
    wall = f"{x.wall:.2f}" if x.wall is not None else ""
    peak = f"{x.peak_mb:.0f}" if x.peak_mb is not None else ""
    work = f"{x.work:.2f}" if x.work else "–"
    rate = f"{x.rate:,.0f}" if x.work else "–"
    backend = x.detail.get("backend_peak_mb")
    note = x.note + (f"; server backend peak {backend:.0f} MB" if backend else "")
    return f"| {x.name} | {x.start} | {x.rows:,} | {work} | {wall} | {rate} | {peak} | {note} |"


def _ratio(f: dict[str, Figure], ours: str, theirs: str) -> float | None:
    if ours not in f or not f[ours].work:
        return None
    if theirs in ("floor", "floor_indexed", "floor_production"):
        copy = "floor_copy" + theirs.removeprefix("floor")
        if copy not in f or "floor_read" not in f:
            return None
        other = f[copy].work + f["floor_read"].work
    elif theirs in f and f[theirs].work:
        other = f[theirs].work
    else:
        return None
    return f[ours].work / other
