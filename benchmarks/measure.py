"""Run a command as a subprocess and measure it: wall time, peak RSS, its JSON payload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Measured:
    """One subprocess: `wall` from spawn to exit (Python's start included), `peak_rss_mb` the
    child's own maximum resident set (`wait4`'s ru_maxrss; the PostgreSQL server is not a child
    and is not counted), `payload` the JSON object the child printed last on stdout."""

    command: tuple[str, ...]
    wall: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    payload: dict[str, Any]


class WorkloadFailed(RuntimeError):
    pass


# A small process between the runner and the workload. Linux carries the peak RSS of the
# process that execs into the new program (ru_maxrss survives exec), so a workload forked
# straight from the runner, which holds the demo data, would report the runner's peak. This
# launcher starts small (`-S -I`, stdlib only), forks and execs the workload, and reports the
# workload's own wall time and peak RSS into the file named by its first argument.
_LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    json.dump({"wall": wall, "maxrss_kb": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_measured(command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 timeout: float = 1800.0, expect: Sequence[int] = (0,)) -> Measured:
    """Run `command` through the launcher, which measures it, and parse the last stdout line
    that is a JSON object. Raises `WorkloadFailed` on an exit code not in `expect` or a
    timeout (the workload is killed), with the workload's stderr."""
    with (tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err,
          tempfile.NamedTemporaryFile("r", suffix=".json") as report):
        process = subprocess.Popen(
            [sys.executable, "-S", "-I", "-c", _LAUNCHER, report.name, *command],
            stdout=out, stderr=err, text=True, env={**_clean_environment(), **(env or {})},
            start_new_session=True,  # a timeout kills the launcher and the workload together
        )
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise WorkloadFailed(f"{' '.join(command)} did not finish in {timeout:.0f} s") from None
        measured = json.loads(report.read() or "{}")
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if returncode not in expect or not measured:
        raise WorkloadFailed(f"{' '.join(command)} exited {returncode}:\n{stderr[-4000:]}")
    return Measured(tuple(command), measured["wall"], measured["maxrss_kb"] / 1024, returncode,
                    stdout, stderr, _last_json(stdout))


def _clean_environment() -> dict[str, str]:
    """This environment without `ENGINE_*` settings: a workload sees only what it is given."""
    return {name: value for name, value in os.environ.items() if not name.startswith("ENGINE_")}


def python_module(module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args…` with this interpreter (this venv)."""
    return [sys.executable, "-m", module, *args]


def engine_command(*args: str) -> list[str]:
    """The `engine` console script of this environment (what a user runs), else its module."""
    script = os.path.join(os.path.dirname(sys.executable), "engine")
    if os.access(script, os.X_OK):
        return [script, *args]
    return [sys.executable, "-c", "import sys; from engine.cli import main; sys.argv[0] = 'engine'; "
            "main()", *args]


def _last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    text = stdout.strip()
    if text.startswith("{"):  # `engine … --json` prints indented JSON
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return {}
