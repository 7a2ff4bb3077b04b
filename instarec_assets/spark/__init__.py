"""Jobs that run on Spark and report to Dagster through Pipes (the Spark engine's entry points)."""
