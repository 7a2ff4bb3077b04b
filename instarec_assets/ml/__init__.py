"""Dagster-free model logic for the reorder model: training, metrics, basket selection, evaluation."""
