"""Dagster-free consumption-zone logic: scoring feature sets, top-k recommendations, Kaggle submissions."""
