"""Curated zone: the feature sets as of each landing date, computed from every clean partition up to it."""

from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    MetadataValue,
    Output,
    multi_asset,
)
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.metadata import preview, rows_by_eval_set
from instarec_assets.features import FEATURES, CleanSnapshot, build_features, feature_summary
from instarec_assets.partitions import landing_date_partitions
from instarec_assets.resources import LakeResource, lake_connection

CLEAN_INPUTS = ("clean_orders", "clean_order_products", "clean_products", "clean_aisles", "clean_departments")

FEATURE_SET_DESCRIPTIONS = {
    "user_features": "Per-user features (orders, basket size, reorder ratio, days between orders, habits).",
    "product_features": "Per-product features (popularity, reorder probability, cart position, rebuyers).",
    "user_product_features": "User x product features (times bought, recency, streaks, aisle affinity).",
    "training_set": "Candidates of users whose latest order is `train`, with the label and every feature.",
    "inference_set": "Candidates to score: Kaggle `test` orders and every user's next order (`serving`).",
}


def clean_snapshot(lake: LakeResource, partition_key: str) -> CleanSnapshot:
    """The clean zone as of a partition: every orders/lines partition up to it, the catalog at it."""
    locations = lake.locations

    def upto(table: str) -> list[str]:
        return [uri for key, uri in locations.partitions("clean", table).items() if key <= partition_key]

    return CleanSnapshot(
        orders=upto("clean_orders"),
        order_products=upto("clean_order_products"),
        products=locations.partition_uri("clean", "clean_products", partition_key),
        aisles=locations.partition_uri("clean", "clean_aisles", partition_key),
        departments=locations.partition_uri("clean", "clean_departments", partition_key),
    )


def curated_assets(kinds: set[str]) -> list[AssetsDefinition]:
    @multi_asset(
        name="curated_features_step",
        outs={
            name: AssetOut(
                io_manager_key="curated_io_manager", description=text, group_name="curated", kinds=kinds
            )
            for name, text in FEATURE_SET_DESCRIPTIONS.items()
        },
        deps=[AssetKey(name) for name in CLEAN_INPUTS],
        partitions_def=landing_date_partitions,
    )
    def curated_features(
        context: AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource
    ) -> Iterator:
        scratch = lake.staging_dir(context.run_id, "curated")
        with lake_connection(duckdb, lake) as conn:
            tables = build_features(conn, clean_snapshot(lake, context.partition_key), scratch)
            stats, correlations = feature_summary(conn, tables.training_set.path, tables.feature_columns)
            feature_list = "\n".join(f"| `{name}` | {FEATURES[name]} |" for name in tables.feature_columns)
            set_metadata = {
                "feature_count": MetadataValue.int(len(tables.feature_columns)),
                "features": MetadataValue.md("| feature | definition |\n| --- | --- |\n" + feature_list),
            }
            for name in FEATURE_SET_DESCRIPTIONS:
                staged = getattr(tables, name)
                metadata = {"preview": preview(conn, str(staged.path))}
                if name in ("training_set", "inference_set"):
                    metadata.update(set_metadata)
                    metadata.update(rows_by_eval_set(conn, str(staged.path)))
                if name == "training_set":
                    label_rate = conn.execute(
                        "SELECT avg(label) FROM read_parquet(?, hive_partitioning = false)",
                        [str(staged.path)],
                    ).fetchall()[0][0]
                    metadata.update(
                        {
                            "summary_statistics": MetadataValue.md(stats),
                            "correlations": MetadataValue.md(correlations),
                            "label_rate": MetadataValue.float(float(label_rate or 0.0)),
                        }
                    )
                yield Output(staged, output_name=name, metadata=metadata)

    return [curated_features]
