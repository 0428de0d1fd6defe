"""Curtailment → bitcoin reconciliation engine."""
