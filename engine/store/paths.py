"""The layout of `data/` and atomic writes, there and to files a user names.

Per month, the newest run's files replace the previous ones; hive-style `month=YYYY-MM`
folders let DuckDB and Polars read many months as one dataset.

Every file is written to a temporary file in its folder and renamed over the target, so a
failed write (a full disk, a read-only folder) leaves the target as it was; the only path
ever removed is that temporary file. A disk or folder the engine cannot write is an
`EnvironmentProblem` (exit 74); an output a user names that is not a regular file in an
existing folder is an `InputError` (exit 2), refused before anything is opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine.errors import EngineError, EnvironmentProblem, InputError, shown_path
from engine.months import Month

_WHY = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large",
        errno.EACCES: "permission denied", errno.EPERM: "permission denied",
        errno.ENOTDIR: "part of the path is a file, not a folder",
        errno.EEXIST: "part of the path is a file, not a folder",
        errno.EIO: "an I/O error"}
#: Errors of a path a user typed that are the path's fault, not the machine's.
_BAD_PATH = {errno.ENOTDIR: "part of the path is a file, not a folder",
             errno.ENAMETOOLONG: "the name is too long", errno.ELOOP: "too many symbolic links"}
_OS_ERROR = re.compile(r"os error (\d+)")


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def postgres(self) -> Path:
        """The embedded server's cluster."""
        return self.root / "postgres"

    # A month's file is `part-0`; a month computed in slices of days has a part per slice.
    def extract(self, table: str, month: Month, part: int = 0) -> Path:
        return self.root / "extracts" / table / f"month={month}" / f"part-{part}.parquet"

    def expected(self, month: Month, part: int = 0) -> Path:
        return self.root / "expected" / f"month={month}" / f"part-{part}.parquet"

    def diff(self, kind: str, month: Month, part: int = 0) -> Path:
        return self.root / "diffs" / kind / f"month={month}" / f"part-{part}.parquet"

    def after(self, month: Month) -> Path:
        """The month's calculations as re-read after the load, for verification."""
        return self.root / "extracts" / "after" / f"month={month}" / "part-0.parquet"


    def check_writable(self) -> None:
        """Raise `EnvironmentProblem` unless files can be created under the data directory
        (it may not exist yet): before a month starts, not halfway through it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            raise environment_problem(error, self.root, "write to the data directory") from None


def parts(first: Path) -> list[Path]:
    """Every part of the dataset whose `part-0.parquet` is `first`, in order."""
    return sorted(first.parent.glob("part-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))


def prune_parts(first: Path, count: int) -> None:
    """Remove the parts beyond the first `count` that an earlier run with more slices left
    beside `first` (`part-0.parquet`)."""
    for path in parts(first)[count:]:
        path.unlink(missing_ok=True)


def write_parquet(frame: pl.DataFrame, path: Path) -> Path:
    """Write `frame` to `path` (under `data/`) atomically: readers see the old file or the new
    one, never half. Raises `EnvironmentProblem` when the disk or folder refuses."""
    return write_atomic(path, lambda temporary: frame.write_parquet(
        temporary, compression="lz4", statistics=False), make_parents=True)


def write_text(path: Path, text: str, *, make_parents: bool = True) -> Path:
    """Write `text` (UTF-8) to `path` atomically; see `write_atomic`."""
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"),
                        make_parents=make_parents)


def write_atomic(path: Path, write: Callable[[Path], object], *, make_parents: bool = False
                 ) -> Path:
    """Call `write(temporary)` for a new file next to `path`, then rename it over `path`.

    A failure removes the temporary file and nothing else; `path` keeps what it held. Raises
    `EnvironmentProblem` for a full or read-only disk (or any refusal of the file system),
    `InputError` when `path` is a directory or a special file, or its folder does not exist
    (and `make_parents` is false).
    """
    check_output(path, must_have_folder=not make_parents)
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise environment_problem(error, path.parent, "create a file in") from None
    temporary = Path(name)
    try:
        write(temporary)
        with contextlib.suppress(FileNotFoundError):  # a replaced file keeps its mode
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, EngineError) or not isinstance(error, Exception):
            raise
        if (code := os_errno(error)) is None:
            raise
        raise environment_problem(OSError(code, os.strerror(code)), path, "write") from None
    return path


def check_output(path: Path, *, must_have_folder: bool = True) -> None:
    """Raise `InputError` unless `path` can be an output: absent or a regular file, in a folder
    that exists (unless `must_have_folder` is false). Opens nothing, so a FIFO cannot hang it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if must_have_folder and not path.parent.is_dir():
            raise InputError(f"cannot write {shown_path(path)}: the folder "
                             f"{shown_path(path.parent)} does not exist") from None
        return
    except OSError as error:
        if must_have_folder and error.errno in _BAD_PATH:  # a path the user typed
            raise InputError(f"cannot write {shown_path(path)}: {_BAD_PATH[error.errno]}"
                             ) from None
        raise environment_problem(error, path, "write") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"cannot write {shown_path(path)}: it is a directory; name a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"cannot write {shown_path(path)}: it is a special file ({file_kind(mode)}), "
                         "not a regular file")


def check_input(path: Path, what: str, *, max_bytes: int | None = None) -> int:
    """Raise `InputError` unless `path` is an existing regular file (of at most `max_bytes`);
    return its size. Opens nothing, so a FIFO or a device cannot hang or flood the reader."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"cannot read {what} {shown_path(path)}: it does not exist") from None
    except OSError as error:
        raise InputError(f"cannot read {what} {shown_path(path)}: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {shown_path(path)} is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {shown_path(path)} is a special file ({file_kind(info.st_mode)}), "
                         "not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise InputError(f"{what} {shown_path(path)} is {info.st_size:,} bytes, more than the limit of "
                         f"{max_bytes:,}")
    return info.st_size


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def os_errno(error: BaseException) -> int | None:
    """The errno of an OSError, or of a Polars error that wraps one (`… (os error 28)`)."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    match = _OS_ERROR.search(str(error))
    return int(match[1]) if match and isinstance(error, pl.exceptions.PolarsError) else None


def environment_problem(error: OSError, path: Path, doing: str) -> EnvironmentProblem:
    """One line for an OSError on `path`: what was being done, where, and why."""
    code = error.errno
    why = _WHY.get(code, error.strerror or str(error)) if code is not None else str(error)
    return EnvironmentProblem(f"cannot {doing} {shown_path(path)}: {why}")
