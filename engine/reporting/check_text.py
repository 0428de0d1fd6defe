"""`engine status --check` as text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.operations.check import CheckResult


def check_text(result: CheckResult) -> str:
    span = f"{result.first}..{result.last}"
    if not result.checked:
        return (f"no verified month with fingerprints in {span}: nothing to compare "
                "(months verified from now on are checked)")
    lines = [f"checked {len(result.checked)} verified month(s) in {result.seconds:.2f} s"]
    if not result.changes:
        lines.append("nothing changed since they were verified")
    for change in result.changes:
        what = []
        if change.source_days:
            what.append(f"source changed on {len(change.source_days)} day(s)")
        if change.calculation_days:
            what.append(f"calculations changed on {len(change.calculation_days)} day(s)")
        lines.append(f"{change.month}  {change.status:<10} {', '.join(what)}: {change.detail}")
    if any(c.regressed for c in result.changes):
        lines.append("regressed months are reconciled again by `engine run` (or "
                     "`engine run --only regressed`) and by `engine scheduled`")
    elif result.changes:
        lines.append("months whose source changed are reconciled again by `engine scheduled`, "
                     "or by `engine month YYYY-MM`")
    if result.unchecked:
        lines.append(f"{len(result.unchecked)} completed month(s) were verified before "
                     "fingerprints were kept; a new run of them stores theirs")
    return "\n".join(lines)
