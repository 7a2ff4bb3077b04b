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

from instarec_assets.backends.dynamodb_store import DynamoDbRecommendationStore
from instarec_assets.backends.recommendations import (
    MAX_RANK,
    ROW_SCHEMA,
    LoadReport,
    Recommendation,
    RecommendationStore,
    ServingStoreError,
    UserRecommendations,
)
from instarec_assets.backends.sqlite_store import SqliteRecommendationStore

__all__ = [
    "MAX_RANK",
    "ROW_SCHEMA",
    "DynamoDbRecommendationStore",
    "LoadReport",
    "Recommendation",
    "RecommendationStore",
    "ServingStoreError",
    "SqliteRecommendationStore",
    "UserRecommendations",
]
