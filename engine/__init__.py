"""Curtailment → bitcoin reconciliation engine."""

from engine.store import resources

resources.bound()
