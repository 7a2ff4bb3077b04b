"""Thin Dagster assets, one module per lake zone; the logic they call lives in Dagster-free packages."""
