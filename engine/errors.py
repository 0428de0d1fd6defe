"""Errors the engine raises on purpose, each with the exit code the CLI returns for it.

Anything that is not an `EngineError` is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

#: The most of anything a user typed that an error message quotes.
QUOTE_LIMIT = 80


def quoted(text: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(text)` for an error message, cut to about `limit` characters: a message quotes
    what was typed, not a 100,000-digit argument."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def shown_path(path: object, limit: int = QUOTE_LIMIT) -> str:
    """A path for an error message: whole when short, else its start and end around `…`."""
    text = str(path)
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}…{text[-(limit // 2):]} ({len(text):,} characters)"


class EngineError(Exception):
    """A failure the user can act on; `str(error)` is the one line the CLI prints."""

    exit_code = 2


class InputError(EngineError):
    """Bad command-line input, a bad file or a bad setting."""


class EnvironmentProblem(EngineError):
    """The machine, not the input: a read-only or full disk, a data folder that is a file.

    Exit 74 (`EX_IOERR`), so a scheduler can tell it from bad input (2)."""

    exit_code = 74


class DatabaseUnavailable(EngineError):
    """The database cannot be reached or refused the connection."""


class SchemaError(EngineError):
    """The database lacks a table or column the engine needs."""


class SourceDataError(EngineError):
    """The month's source rows cannot be reconciled as they are (the message says why)."""


class MissingDifficulty(SourceDataError):
    """Dates with qualifying curtailment but no row in `bitcoin_difficulty`."""

    def __init__(self, dates: Iterable[date]) -> None:
        self.dates = sorted(set(dates))
        shown = ", ".join(d.isoformat() for d in self.dates[:10])
        more = f" and {len(self.dates) - 10} more" if len(self.dates) > 10 else ""
        super().__init__(
            f"no difficulty for {len(self.dates)} date(s) with curtailment: {shown}{more}; "
            "load them with `engine difficulty load FILE`"
        )


class MonthBusy(EngineError):
    """Another process holds the month's advisory lock."""

    def __init__(self, month: object, pid: int | None) -> None:
        self.month, self.pid = month, pid
        holder = f" (PostgreSQL backend pid {pid})" if pid else ""
        super().__init__(f"{month} is being reconciled by another process{holder}; "
                         "nothing was done")


class Interrupted(EngineError):
    """A signal stopped the work at a safe point: no month was left half-written."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class VerificationFailed(EngineError):
    """The after-load parity checks did not all pass."""

    exit_code = 1


# --- repairs, plans, undo ---------------------------------------------------------------------


class RepairConflict(EngineError):
    """A row to repair changed under the engine (another writer); nothing was written."""


class PlanOutdated(EngineError):
    """A plan no longer matches the database: its source or its rows changed since."""


class UndoRefused(EngineError):
    """A run cannot be undone (unknown, already undone, no undo record, or its rows changed)."""
