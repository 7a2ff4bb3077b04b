"""build_features: the curated zone's feature tables as of one clean snapshot, staged as parquet."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb

from instarec_assets.features.columns import FEATURE_COLUMNS
from instarec_assets.features.product import PRODUCT_FEATURES_SELECT, build_products
from instarec_assets.features.sets import inference_select, training_select
from instarec_assets.features.snapshot import CleanSnapshot, open_snapshot
from instarec_assets.features.summary import feature_summary
from instarec_assets.features.targets import build_roles, fill_serving_targets
from instarec_assets.features.user import USER_FEATURES_SELECT, build_users
from instarec_assets.features.user_product import USER_PRODUCT_SELECT, build_affinity, build_purchases
from instarec_assets.lake.duck import StagedParquet, copy_to_parquet
from instarec_assets.lake.staging import StagedLocation
from instarec_assets.progress import Stages

LOGGER = logging.getLogger(__name__)

# Dropped at the end so the connection's memory goes back to the caller.
TEMP_TABLES = (
    "feat_product",
    "feat_user",
    "feat_target_lines",
    "feat_history",
    "feat_frames",
    "feat_orders",
    "feat_catalog",
)


@dataclass(frozen=True)
class FeatureTables:
    """Staged feature tables. The level tables carry a `framing` column ('target' | 'serving' | 'earlier')."""

    user_features: StagedParquet
    product_features: StagedParquet
    user_product_features: StagedParquet
    training_set: StagedParquet
    inference_set: StagedParquet
    feature_columns: tuple[str, ...] = FEATURE_COLUMNS

    def summary(self, conn: duckdb.DuckDBPyConnection, table: str = "training_set") -> tuple[str, str]:
        """(stats, correlation) markdown tables for one of the staged sets, on a sample."""
        staged: StagedParquet = getattr(self, table)
        return feature_summary(conn, staged.path, self.feature_columns)


def build_features(
    conn: duckdb.DuckDBPyConnection, snapshot: CleanSnapshot, scratch: StagedLocation
) -> FeatureTables:
    """Every feature table for the snapshot, as temp tables in `conn`, written to `scratch` (a local
    folder, or a URI prefix when the Spark job stages on S3)."""
    stages = Stages(LOGGER, "feature stage", 12)
    stages.start("snapshot")
    open_snapshot(conn, snapshot)
    stages.start("order roles")
    build_roles(conn)
    stages.start("purchases")
    build_purchases(conn)
    stages.start("users")
    build_users(conn)
    stages.start("serving targets")
    fill_serving_targets(conn)
    stages.start("products")
    build_products(conn)
    stages.start("user x product affinity")
    build_affinity(conn)
    stages.start("user_product_features")
    user_product = copy_to_parquet(conn, USER_PRODUCT_SELECT, scratch / "user_product_features.parquet")
    for table in ("feat_up", "feat_user_aisle", "feat_user_department"):
        conn.execute(f"DROP TABLE {table}")
    stages.start("user_features")
    user_features = copy_to_parquet(conn, USER_FEATURES_SELECT, scratch / "user_features.parquet")
    stages.start("product_features")
    product_features = copy_to_parquet(conn, PRODUCT_FEATURES_SELECT, scratch / "product_features.parquet")
    stages.start("training_set")
    training_set = copy_to_parquet(conn, training_select(user_product.path), scratch / "training_set.parquet")
    stages.start("inference_set")
    tables = FeatureTables(
        user_features=user_features,
        product_features=product_features,
        user_product_features=user_product,
        training_set=training_set,
        inference_set=copy_to_parquet(
            conn, inference_select(user_product.path), scratch / "inference_set.parquet"
        ),
    )
    for table in TEMP_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    for view in ("feat_clean_orders", "feat_clean_lines"):
        conn.execute(f"DROP VIEW IF EXISTS {view}")
    return tables
