"""One feature build as plain data, run on either engine's connection.

The curated step builds a FeatureRequest. On DuckDB it runs it in process (when there is no previous
batch to update, or a full recompute is asked for); on Spark it hands it to the Pipes job
(instarec_assets/spark/features_job.py) as JSON, and the job runs the same `run_feature_request` on a
SparkConnection (lake/spark_connection.py), which runs the very feature SQL of features/ transpiled by
lake/engines.py, and reports the staged files back as JSON.

A request with `previous` (the batch before's tables) is the incremental update
(features/incremental.py) instead of a full build. On Spark it writes whole tables (a base each
batch), never deltas: a delta names its chain in the parquet footer (DuckDB's COPY ... KV_METADATA,
lake/feature_delta.py), which Spark's writer has no option for, and resolving a chain needs
DuckDB's UNION ALL BY NAME. So Spark updates a previous batch stored whole (its own output, or a
DuckDB base) and rebuilds in full after a DuckDB delta. Every way gives the same rows
(test_incremental_equals_full_build; on Spark, test_engine_spark_incremental.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from instarec_assets.features.build import FeatureTables, build_features
from instarec_assets.features.incremental import (
    DeltaChain,
    PreviousFeatures,
    all_users_affected,
    update_last_batch,
)
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
# Everything a build stages, as `_result.json` names it.
STAGED_TABLES = (*FEATURE_TABLES, AFFECTED_USERS)
# The result's key for what an update (not a full build) reports.
UPDATE = "update"


@dataclass(frozen=True)
class FeatureRequest:
    """The feature tables as of one partition: the clean orders and lines of every batch up to it
    (oldest first; the last is this batch's), the catalog at it, and where the tables are staged: a
    local folder, or a URI (the Spark job on EMR Serverless: an s3:// prefix). With `previous`, the
    batch before's whole tables are updated; without, everything is built from the history."""

    orders: tuple[str, ...]
    order_products: tuple[str, ...]
    products: str
    aisles: str
    departments: str
    staging: str
    previous: PreviousFeatures | None = None

    @classmethod
    def from_snapshot(
        cls, snapshot: CleanSnapshot, staging: str, previous: PreviousFeatures | None = None
    ) -> FeatureRequest:
        return cls(
            orders=tuple(snapshot.orders),
            order_products=tuple(snapshot.order_products),
            products=snapshot.products,
            aisles=snapshot.aisles,
            departments=snapshot.departments,
            staging=staging,
            previous=previous,
        )

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
            "previous": asdict(self.previous) if self.previous is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureRequest:
        previous = data.get("previous")
        return cls(
            **{
                **data,
                "orders": tuple(data["orders"]),
                "order_products": tuple(data["order_products"]),
                "previous": PreviousFeatures(**previous) if previous is not None else None,
            }
        )


@dataclass(frozen=True)
class FeatureBuild:
    """The staged feature tables and the affected users (every user, `full build`, on a full build).
    `update`: None for a full build; for an update, IncrementalResult.summary()."""

    tables: FeatureTables
    affected: StagedParquet
    update: dict[str, Any] | None = None


def run_full_build(conn, request: FeatureRequest) -> FeatureBuild:
    """Every feature table from the whole history, on `conn`: a DuckDB connection or a SparkConnection."""
    scratch = staging_location(request.staging)
    tables = build_features(conn, request.snapshot, scratch)
    affected = all_users_affected(conn, list(request.orders), scratch / f"{AFFECTED_USERS}.parquet")
    return FeatureBuild(tables=tables, affected=affected)


def run_feature_request(conn, request: FeatureRequest, delta: DeltaChain | None = None) -> FeatureBuild:
    """The request on `conn`: the incremental update of `request.previous` (whole tables, or with
    `delta` this batch's deltas on that chain: DuckDB only), or a full build without one."""
    if request.previous is None:
        return run_full_build(conn, request)
    result = update_last_batch(
        conn, request.snapshot, request.previous, staging_location(request.staging), delta=delta
    )
    return FeatureBuild(tables=result.tables, affected=result.affected_user_ids, update=result.summary())


def build_as_json(build: FeatureBuild) -> dict[str, Any]:
    """A FeatureBuild as the Spark job stages it in `_result.json`: each table's staged path and rows,
    and `update` when it was one."""
    staged = {name: getattr(build.tables, name) for name in FEATURE_TABLES} | {AFFECTED_USERS: build.affected}
    result: dict[str, Any] = {
        name: {"path": str(table.path), "rows": table.row_count} for name, table in staged.items()
    }
    if build.update is not None:
        result[UPDATE] = build.update
    return result


def build_from_json(data: dict[str, Any]) -> FeatureBuild:
    staged = {
        name: StagedParquet(staging_location(data[name]["path"]), int(data[name]["rows"]))
        for name in STAGED_TABLES
    }
    return FeatureBuild(
        tables=FeatureTables(**{name: staged[name] for name in FEATURE_TABLES}),
        affected=staged[AFFECTED_USERS],
        update=data.get(UPDATE),
    )


def write_feature_request(fs: AbstractFileSystem, request: FeatureRequest) -> str:
    """`_request.json` in the request's staging location, through `fs` (local or the lake's S3)."""
    return write_staged_request(fs, request.staging, request.as_json())


def read_feature_result(fs: AbstractFileSystem, staging: str) -> FeatureBuild:
    """The FeatureBuild the job wrote last into `staging`, each table it names checked to be there;
    StagedResultMissing names what is missing."""
    build = build_from_json(read_staged_result(fs, staging))
    require_staged(fs, [getattr(build.tables, name).path for name in FEATURE_TABLES] + [build.affected.path])
    return build
