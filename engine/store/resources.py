"""How much of the machine the engine's native libraries take: the CPUs this process may use,
not the host's.

In a container or a cgroup with a CPU quota, the host may show 64 CPUs where the process may
use two. Polars' allocator (jemalloc) keeps four arenas per CPU it counts, each holding freed
pages for a while, and DuckDB starts a thread per CPU: on such a host a month sliced for a
512 MB budget peaked at 696 MB, where a two-CPU machine peaks at about 410 MB. `bound()` runs before Polars
loads (from `engine/__init__.py`) and sets what each library reads, unless the user already
set it.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

#: jemalloc arenas at most: enough for the threads one month runs, few enough that freed
#: pages do not pile up in idle arenas.
MAX_ARENAS = 8


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def bound() -> None:
    """Tell Polars and its allocator how many CPUs there are (before Polars is imported)."""
    cpus = usable_cpus()
    os.environ.setdefault("POLARS_MAX_THREADS", str(cpus))
    os.environ.setdefault("_RJEM_MALLOC_CONF", f"narenas:{min(MAX_ARENAS, 4 * cpus)}")


@functools.cache
def base_mb() -> int:
    """The process's resident memory the first time it is asked, before a month holds data:
    what its libraries take on this machine (more where they count more CPUs)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // 2**20
