"""The recommendations serving store: one interface, a SQLite file locally and DynamoDB on AWS.

```python
store = SqliteRecommendationStore(home / "serving" / "recommendations.sqlite")  # or DynamoDbRecommendationStore(...)
report = store.load(recommendations_table, model_version="xgb-2025-01-06", batch="2025-01-06")
store.top_k(user_id=42, k=5)        # UserRecommendations | None, items sorted by rank
store.current_version()             # the version id readers see
store.versions()                    # retained versions: id, batch, model_version, loaded_at, counts, active
store.activate(version_id)          # roll back (or forward) to a retained version in one switch
store.load(changed, model_version, batch=..., delta=True)  # only the affected users: a delta version
store.chain()                       # the active version and its bases, newest first
```

Each version records the landing batch (partition key `YYYY-MM-DD`) it was built from. A load
from a batch older than the active version's is refused (ServingStoreError) unless
`allow_older=True`; the same batch (a re-run) or a newer one loads. A store keeps the newest
`keep_versions` loads (3 by default, `INSTAREC_SERVING_KEEP_VERSIONS`), the active one always
among the kept; older versions are removed by the next load.

A delta load (`delta=True`) writes only the given users' lists; its base is the version active
when it starts, and every other user (and similar items, unless the load is given its own whole
set) reads through the base, the base's base, ... down to the newest full version: the version's
chain. A read takes the newest version in the chain that holds the user, at a bounded cost (one
SQLite statement over the chain's tables; one DynamoDB Query of the user's partition). At most
`max_delta_chain` deltas stack on a full version (8, `INSTAREC_SERVING_MAX_DELTA_CHAIN`); the
next delta is refused until a full load. Retention never removes a base that a retained version
reads through, and `activate` of a delta activates its chain.

`load` accepts a pyarrow Table, RecordBatch or pandas DataFrame, or an iterable of them (e.g. a
`pyarrow.RecordBatchReader` from DuckDB); columns `user_id, rank, product_id, product_name, aisle,
department, probability` and optionally `explore` (default False) and `model_version` (must match
the argument). Both stores validate the same way (`recommendations.iter_user_lists`). Versions are
ids `YYYYmmddTHHMMSSffffffZ-xxxxxx`, ordered by load start; see the two store modules for how each
switches readers atomically and removes older versions.
"""

from __future__ import annotations

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
    VersionRecord,
)
from instarec_assets.backends.sqlite_store import SqliteRecommendationStore
from instarec_assets.settings import Settings

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
    "VersionRecord",
    "keep_versions_from_env",
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
    keep_versions: int | None = None,
    max_delta_chain: int | None = None,
) -> RecommendationStore:
    """The configured store; `kind` is `sqlite` (local) or `dynamodb` (aws). `keep_versions`
    defaults to INSTAREC_SERVING_KEEP_VERSIONS, else 3; `max_delta_chain` to
    INSTAREC_SERVING_MAX_DELTA_CHAIN, else 8."""
    settings = Settings.from_env() if keep_versions is None or max_delta_chain is None else None
    keep = keep_versions if keep_versions is not None else settings.serving_keep_versions
    chain = max_delta_chain if max_delta_chain is not None else settings.serving_max_delta_chain
    if kind == "sqlite":
        path = Path(sqlite_path)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteRecommendationStore(path, read_only=read_only, keep_versions=keep, max_delta_chain=chain)
    if kind == "dynamodb":
        if not dynamodb_table:
            raise ServingStoreError("INSTAREC_DYNAMODB_TABLE must be set to use the DynamoDB serving store")
        return DynamoDbRecommendationStore(
            dynamodb_table,
            region_name=region,
            endpoint_url=endpoint_url or None,
            keep_versions=keep,
            max_delta_chain=chain,
        )
    raise ServingStoreError(f"serving store kind must be 'sqlite' or 'dynamodb', not {kind!r}")


def keep_versions_from_env() -> int:
    """INSTAREC_SERVING_KEEP_VERSIONS: how many loaded versions a store retains (default 3)."""
    return Settings.from_env().serving_keep_versions


def store_settings_from_env(home: str | Path) -> dict[str, str]:
    """SQLite under INSTAREC_HOME locally; in aws mode the table named by INSTAREC_DYNAMODB_TABLE."""
    settings = Settings.from_env()
    return {
        "kind": "dynamodb" if settings.env == "aws" else "sqlite",
        "sqlite_path": str(Path(home).resolve() / SQLITE_FILE),
        "dynamodb_table": settings.dynamodb_table,
        "region": settings.region,
        "endpoint_url": settings.endpoint_url,
    }


def store_from_env(home: str | Path, read_only: bool = False) -> RecommendationStore:
    return open_store(**store_settings_from_env(home), read_only=read_only)
