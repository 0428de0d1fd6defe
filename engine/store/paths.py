"""The layout of `data/` and atomic Parquet writes.

Per month, the newest run's files replace the previous ones; hive-style `month=YYYY-MM`
folders let DuckDB and Polars read many months as one dataset.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine.months import Month


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def postgres(self) -> Path:
        """The embedded server's cluster."""
        return self.root / "postgres"

    def extract(self, table: str, month: Month) -> Path:
        return self.root / "extracts" / table / f"month={month}" / "part-0.parquet"

    def expected(self, month: Month) -> Path:
        return self.root / "expected" / f"month={month}" / "part-0.parquet"

    def diff(self, kind: str, month: Month) -> Path:
        return self.root / "diffs" / kind / f"month={month}" / "part-0.parquet"

    def after(self, month: Month) -> Path:
        """The month's calculations as re-read after the load, for verification."""
        return self.root / "extracts" / "after" / f"month={month}" / "part-0.parquet"


def write_parquet(frame: pl.DataFrame, path: Path) -> Path:
    """Write `frame` to `path` atomically: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".parquet.tmp")
    os.close(handle)
    try:
        frame.write_parquet(temporary, compression="lz4", statistics=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
