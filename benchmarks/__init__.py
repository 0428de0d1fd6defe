"""The benchmark suite: the engine against what one would do instead, on the same data.

    uv run python -m benchmarks            # everything, a few minutes, results in RESULTS.md

Modules: `run` (the one command: its own server, data, order of the measurements, report),
`measure` (a subprocess's wall time and peak memory), `database` (the benchmark database:
backlog snapshot, resets, comparisons), `workloads` (each measured workload, run as a
subprocess), `in_database` (formula v1 as one INSERT … SELECT per month), `original` (the
original tool's day-by-day, 500-row-batch approach), `report` (tables and RESULTS.md).
"""
