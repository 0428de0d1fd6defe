"""Repairs of what a month holds besides missing rows: the `causes` of drift and duplicates
(the older writers recomputed in `legacy`), the repair `actions`, the `undo` images that put
them back, and repair `plans` written to a file."""
