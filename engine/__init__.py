"""Curtailment → bitcoin reconciliation engine."""

from engine import resources

resources.bound()
