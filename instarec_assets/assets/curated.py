"""Curated zone: the feature sets as of each landing date, computed from every clean partition up to it."""

from collections.abc import Iterator

from dagster import AssetExecutionContext, AssetIn, AssetOut, MetadataValue, Output, multi_asset
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.metadata import history_read, preview, rows_by_eval_set
from instarec_assets.features import FEATURES, CleanSnapshot, build_features, feature_summary
from instarec_assets.partitions import HISTORY_POOL, history_input, landing_batches
from instarec_assets.resources import LakeResource, lake_connection

CURATED_KINDS = {"duckdb", "parquet"}

# The clean zone as of a batch: the orders and lines of every batch up to it, the catalog at it.
CLEAN_SNAPSHOT_INS: dict[str, AssetIn] = {
    "clean_orders": history_input("clean_orders"),
    "clean_order_products": history_input("clean_order_products"),
    "clean_products": AssetIn("clean_products"),
    "clean_aisles": AssetIn("clean_aisles"),
    "clean_departments": AssetIn("clean_departments"),
}

FEATURE_SET_DESCRIPTIONS = {
    "user_features": "Per-user features (orders, basket size, reorder ratio, days between orders, habits).",
    "product_features": "Per-product features (popularity, reorder probability, cart position, rebuyers).",
    "user_product_features": "User x product features (times bought, recency, streaks, aisle affinity).",
    "training_set": "Candidates of users whose latest order is `train`, with the label and every feature.",
    "inference_set": "Candidates to score: Kaggle `test` orders and every user's next order (`serving`).",
}


def clean_snapshot(
    clean_orders: list[str],
    clean_order_products: list[str],
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
) -> CleanSnapshot:
    """The loaded CLEAN_SNAPSHOT_INS as the feature code's input."""
    return CleanSnapshot(
        orders=clean_orders,
        order_products=clean_order_products,
        products=clean_products,
        aisles=clean_aisles,
        departments=clean_departments,
    )


@multi_asset(
    name="curated_features_step",
    outs={
        name: AssetOut(
            io_manager_key="curated_io_manager", description=text, group_name="curated", kinds=CURATED_KINDS
        )
        for name, text in FEATURE_SET_DESCRIPTIONS.items()
    },
    ins=CLEAN_SNAPSHOT_INS,
    partitions_def=landing_batches,
    pool=HISTORY_POOL,
)
def curated_features_step(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    clean_orders: list[str],
    clean_order_products: list[str],
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
) -> Iterator:
    snapshot = clean_snapshot(
        clean_orders, clean_order_products, clean_products, clean_aisles, clean_departments
    )
    scratch = lake.staging_dir(context.run_id, "curated")
    with lake_connection(duckdb, lake) as conn:
        tables = build_features(conn, snapshot, scratch)
        stats, correlations = feature_summary(conn, tables.training_set.path, tables.feature_columns)
        feature_list = "\n".join(f"| `{name}` | {FEATURES[name]} |" for name in tables.feature_columns)
        set_metadata = {
            "feature_count": MetadataValue.int(len(tables.feature_columns)),
            "features": MetadataValue.md("| feature | definition |\n| --- | --- |\n" + feature_list),
        }
        for name in FEATURE_SET_DESCRIPTIONS:
            staged = getattr(tables, name)
            metadata = {
                "preview": preview(conn, str(staged.path)),
                "history_read": history_read(
                    clean_orders=clean_orders, clean_order_products=clean_order_products
                ),
            }
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
