"""Work over many months or on a month's history: the `backfill` (its month `selection`,
`retries`, `throttle` and `alerts`), the `scheduled` job, and `review` (`engine diff`, `plan`,
`apply`, `undo`)."""
