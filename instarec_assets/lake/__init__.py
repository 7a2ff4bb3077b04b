"""Dagster-free lake logic: landing files, the raw and clean zones, row accounting (DuckDB SQL)."""
