"""One month, in data-flow order: `extract` → recompute (`engine.formula`) → `diff` → `load`
(with the repairs of `engine.repairs` and the `summaries`, in the one transaction of `write`)
→ `verify` → record (`progress`). `reconcile` is the one orchestrator of a month; the steps
never call each other."""
