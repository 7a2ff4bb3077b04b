"""The recommendations serving store: one interface, a SQLite file locally and DynamoDB on AWS.

```python
store = SqliteRecommendationStore(home / "serving" / "recommendations.sqlite")  # or DynamoDbRecommendationStore(...)
report = store.load(recommendations_table, model_version="xgb-2025-01-06")     # new version, one switch, old removed
store.top_k(user_id=42, k=5)        # UserRecommendations | None, items sorted by rank
store.current_version()             # the version id readers see
```

`load` accepts a pyarrow Table, RecordBatch or pandas DataFrame, or an iterable of them (e.g. a
`pyarrow.RecordBatchReader` from DuckDB); columns `user_id, rank, product_id, product_name, aisle,
department, probability` and optionally `explore` (default False) and `model_version` (must match
the argument). Both stores validate the same way (`recommendations.iter_user_lists`). Versions are
ids `YYYYmmddTHHMMSSffffffZ-xxxxxx`, ordered by load start; see the two store modules for how each
switches readers atomically and removes older versions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from instarec_assets.backends.dynamodb_store import DynamoDbRecommendationStore
from instarec_assets.backends.recommendations import (
    MAX_RANK,
    LoadReport,
    Recommendation,
    RecommendationStore,
    ServingStoreError,
    UserRecommendations,
)
from instarec_assets.backends.sqlite_store import SqliteRecommendationStore

SQLITE_FILE = Path("serving") / "recommendations.sqlite"

__all__ = [
    "MAX_RANK",
    "ROW_SCHEMA",  # noqa: F822 (module __getattr__)
    "SQLITE_FILE",
    "DynamoDbRecommendationStore",
    "LoadReport",
    "Recommendation",
    "RecommendationStore",
    "ServingStoreError",
    "SqliteRecommendationStore",
    "UserRecommendations",
    "open_store",
    "store_from_env",
]


def __getattr__(name: str) -> Any:
    if name == "ROW_SCHEMA":  # needs pyarrow, which the serving Lambda does not ship
        from instarec_assets.backends.recommendations import ROW_SCHEMA

        return ROW_SCHEMA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(
    kind: str,
    sqlite_path: str,
    dynamodb_table: str,
    region: str,
    endpoint_url: str,
    read_only: bool = False,
) -> RecommendationStore:
    """The configured store; `kind` is `sqlite` (local) or `dynamodb` (aws)."""
    if kind == "sqlite":
        path = Path(sqlite_path)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteRecommendationStore(path, read_only=read_only)
    if kind == "dynamodb":
        if not dynamodb_table:
            raise ServingStoreError("INSTAREC_DYNAMODB_TABLE must be set to use the DynamoDB serving store")
        return DynamoDbRecommendationStore(
            dynamodb_table, region_name=region, endpoint_url=endpoint_url or None
        )
    raise ServingStoreError(f"serving store kind must be 'sqlite' or 'dynamodb', not {kind!r}")


def store_settings_from_env(home: str | Path) -> dict[str, str]:
    """SQLite under INSTAREC_HOME locally; in aws mode the table named by INSTAREC_DYNAMODB_TABLE."""
    aws = os.environ.get("INSTAREC_ENV", "local") == "aws"
    return {
        "kind": "dynamodb" if aws else "sqlite",
        "sqlite_path": str(Path(home).resolve() / SQLITE_FILE),
        "dynamodb_table": os.environ.get("INSTAREC_DYNAMODB_TABLE", ""),
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "endpoint_url": os.environ.get("INSTAREC_AWS_ENDPOINT_URL", ""),
    }


def store_from_env(home: str | Path, read_only: bool = False) -> RecommendationStore:
    return open_store(**store_settings_from_env(home), read_only=read_only)
