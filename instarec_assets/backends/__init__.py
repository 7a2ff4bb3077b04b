"""Dagster-free clients of the serving stores (SQLite, DynamoDB) and of SageMaker; see README.md here."""
