"""Stopping on a signal without leaving a month half-written.

The first SIGINT (Ctrl-C) or SIGTERM asks the work to stop at the next safe point: a month
that has not begun writing is not begun, a month in its write transaction is finished and
verified, and what is left is recorded as `interrupted` (exit 130, or 143 for SIGTERM). A
second signal stops at once: PostgreSQL rolls back a write transaction in flight, and a month
whose write had already committed is recorded as interrupted, still undoable.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

#: The exit code of a process stopped by each signal (128 + its number).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Set by the first signal; every worker checks it between steps. Until it is `armed`
    (the work is connected and about to start months) a signal stops at once: there is
    nothing to finish, and a connection attempt should not be waited out."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.armed = False

    def arm(self) -> None:
        self.armed = True

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(signal.Signals(self.signum or signal.SIGINT), 130)


class HardStop(KeyboardInterrupt):
    """A second signal: stop now. Carries the exit code of the first."""

    def __init__(self, exit_code: int) -> None:
        super().__init__()
        self.exit_code = exit_code


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to `stop` while the block runs (main thread only; elsewhere
    signals keep their handlers). The second signal raises `HardStop`."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.requested or not stop.armed:
            stop.request(signum)
            raise HardStop(stop.exit_code)
        stop.request(signum)
        log.warning("%s: finishing the month(s) in progress, then stopping (again to stop now)",
                    signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in EXIT_CODES}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises `HardStop(143)` like Ctrl-C raises
    `KeyboardInterrupt`, so what is not committed is rolled back and recorded (main thread
    only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise HardStop(EXIT_CODES[signal.SIGTERM])

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
