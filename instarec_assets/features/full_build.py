"""One full feature build as plain data, run on either engine's connection.

The curated step builds a FeatureRequest. On DuckDB it runs it in process (when there is no previous
batch to update, or a full recompute is asked for); on Spark it hands it to the Pipes job
(instarec_assets/spark/features_job.py) as JSON, and the job runs the same `run_full_build` on a
SparkConnection (lake/spark_connection.py), which runs the very feature SQL of features/ transpiled by
lake/engines.py, and reports the staged files back as JSON.

The Spark engine runs this full build every batch. The incremental update (features/incremental.py)
stays on DuckDB: its output is feature deltas whose parquet footer names their chain (DuckDB's COPY
... KV_METADATA, lake/feature_delta.py), for which Spark's parquet writer has no option, and it renames
temp tables between statements (ALTER TABLE ... RENAME), which SparkConnection does not translate.
Sharing it needs a chain record Spark can write (a sidecar file beside each delta, say). The full
build gives the same rows as the update (test_incremental_equals_full_build), so switching engines
changes the cost of a batch, never its features; on a cluster the full build is one parallel scan of
the history, which is what Spark is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from instarec_assets.features.build import FeatureTables, build_features
from instarec_assets.features.incremental import all_users_affected
from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.duck import StagedParquet
from instarec_assets.lake.staging import (
    read_staged_result,
    require_staged,
    staging_location,
    write_staged_request,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# The staged tables of a full build, as FeatureTables names them, plus the affected users.
FEATURE_TABLES = (
    "user_features",
    "product_features",
    "user_product_features",
    "training_set",
    "inference_set",
)
AFFECTED_USERS = "affected_users"


@dataclass(frozen=True)
class FeatureRequest:
    """A full build as of one partition: the clean orders and lines of every batch up to it (oldest
    first), the catalog at it, and where the tables are staged: a local folder, or a URI (the
    Spark job on EMR Serverless: an s3:// prefix)."""

    orders: tuple[str, ...]
    order_products: tuple[str, ...]
    products: str
    aisles: str
    departments: str
    staging: str

    @property
    def snapshot(self) -> CleanSnapshot:
        return CleanSnapshot(
            orders=list(self.orders),
            order_products=list(self.order_products),
            products=self.products,
            aisles=self.aisles,
            departments=self.departments,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "orders": list(self.orders),
            "order_products": list(self.order_products),
            "products": self.products,
            "aisles": self.aisles,
            "departments": self.departments,
            "staging": self.staging,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureRequest:
        return cls(
            **{**data, "orders": tuple(data["orders"]), "order_products": tuple(data["order_products"])}
        )


@dataclass(frozen=True)
class FullBuild:
    """The staged feature tables and the affected users (every user: `full build`)."""

    tables: FeatureTables
    affected: StagedParquet


def run_full_build(conn, request: FeatureRequest) -> FullBuild:
    """Every feature table from the whole history, on `conn`: a DuckDB connection or a SparkConnection."""
    scratch = staging_location(request.staging)
    tables = build_features(conn, request.snapshot, scratch)
    affected = all_users_affected(conn, list(request.orders), scratch / f"{AFFECTED_USERS}.parquet")
    return FullBuild(tables=tables, affected=affected)


def build_as_json(build: FullBuild) -> dict[str, dict[str, Any]]:
    """A FullBuild as the Spark job stages it in `_result.json`: each table's staged path and rows."""
    staged = {name: getattr(build.tables, name) for name in FEATURE_TABLES} | {AFFECTED_USERS: build.affected}
    return {name: {"path": str(table.path), "rows": table.row_count} for name, table in staged.items()}


def build_from_json(data: dict[str, dict[str, Any]]) -> FullBuild:
    staged = {
        name: StagedParquet(staging_location(item["path"]), int(item["rows"])) for name, item in data.items()
    }
    return FullBuild(
        tables=FeatureTables(**{name: staged[name] for name in FEATURE_TABLES}),
        affected=staged[AFFECTED_USERS],
    )


def write_feature_request(fs: AbstractFileSystem, request: FeatureRequest) -> str:
    """`_request.json` in the request's staging location, through `fs` (local or the lake's S3)."""
    return write_staged_request(fs, request.staging, request.as_json())


def read_feature_result(fs: AbstractFileSystem, staging: str) -> FullBuild:
    """The FullBuild the job wrote last into `staging`, each table it names checked to be there;
    StagedResultMissing names what is missing."""
    build = build_from_json(read_staged_result(fs, staging))
    require_staged(fs, [getattr(build.tables, name).path for name in FEATURE_TABLES] + [build.affected.path])
    return build
