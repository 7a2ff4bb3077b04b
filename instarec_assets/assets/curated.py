"""Curated zone: the feature sets as of each landing batch, over every clean batch up to it; after the
first batch, the previous batch's tables updated for the users and products the batch touched.

With the Spark engine the build or update is run by the Spark job (spark/features_job.py) through
Pipes: a local PySpark subprocess, or in aws mode an EMR Serverless job run staging on S3
(assets/spark_jobs.py, as the clean steps). Spark writes whole tables, never deltas, and after a
batch stored as deltas (by the DuckDB engine) rebuilds in full; features/full_build.py says why."""

import time
from collections.abc import Iterator

from dagster import AssetExecutionContext, AssetIn, AssetOut, Config, MetadataValue, Output, multi_asset
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.metadata import history_read, preview, rows_by_eval_set
from instarec_assets.assets.spark_jobs import features_on_spark
from instarec_assets.features import (
    FEATURES,
    CleanSnapshot,
    PreviousFeatures,
    feature_summary,
)
from instarec_assets.features.full_build import FeatureRequest, run_feature_request
from instarec_assets.features.incremental import DeltaChain, delta_chain, first_delta
from instarec_assets.history import own_earlier_partitions
from instarec_assets.lake.clean_steps import SPARK_ENGINE
from instarec_assets.lake.feature_delta import feature_source
from instarec_assets.partitions import HISTORY_POOL, history_input, landing_batches
from instarec_assets.resources import ComputeResource, EmrServerlessResource, LakeResource, lake_connection

CURATED_KINDS = {"duckdb", "parquet"}
SPARK_AFTER_DELTA_REASON = (
    "the previous batch's tables are feature deltas (written by the duckdb engine), which the spark "
    "engine cannot resolve: it rebuilt every table from the whole history (the same rows)"
)

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
    "training_set": "Candidates of users whose latest order is `train` (eval_set `train`), and of short "
    "histories' order before it (`train_earlier`, extra training targets), with the label and every feature.",
    "inference_set": "Candidates to score: Kaggle `test` orders and every user's next order (`serving`).",
}
AFFECTED_USERS_DESCRIPTION = (
    "The users whose feature rows this batch changed, one row each with the reason (new order or line, "
    "moved product, fallback gap; every user with `full build` on a full build): the users the "
    "consumption assets re-score in a delta batch."
)


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


class CuratedFeaturesConfig(Config):
    """Run configuration of curated_features_step."""

    # Rebuild every feature from the whole history instead of updating the previous batch's tables
    # for the users and products this batch touched (the two give the same rows; tested).
    full_recompute: bool = False


# The catalog's history too: the incremental update compares this batch's products with the last.
CURATED_INS: dict[str, AssetIn] = {**CLEAN_SNAPSHOT_INS, "clean_products": history_input("clean_products")}


def _previous_features(
    context: AssetExecutionContext, lake: LakeResource, clean_products: list[str]
) -> tuple[str, PreviousFeatures] | None:
    """The previous batch and its feature tables (this step's own past), or None for the first batch."""
    locations = lake.locations
    earlier = own_earlier_partitions(
        "user_features",
        context.partition_key,
        context.instance,
        context.run_id,
        lambda key: locations.partition_uri("curated", "user_features", key),
        lambda uri: locations.filesystem.exists(uri),
        lake.history_wait,
    )
    if not earlier or len(clean_products) < 2:
        return None
    previous = next(reversed(earlier))
    uri = {name: locations.partition_uri("curated", name, previous) for name in FEATURE_SET_DESCRIPTIONS}
    return previous, PreviousFeatures(**uri, products=clean_products[-2])


def _incremental_metadata(summary: dict) -> dict[str, MetadataValue]:
    """An update's metadata, from IncrementalResult.summary() (in process, or the Spark job's JSON)."""
    return {
        "mode": MetadataValue.text("incremental"),
        "affected_users": MetadataValue.int(summary["affected_users"]),
        "touched_products": MetadataValue.int(summary["touched_products"]),
        "product_update": MetadataValue.text(summary["product_update"]),
        "update_seconds": MetadataValue.json(summary["seconds"]),
    }


def _storage_metadata(chain: DeltaChain | None, max_deltas: int, on_spark: bool) -> dict[str, MetadataValue]:
    """How this batch stored its tables: whole (a base) or as a delta on a chain of earlier files."""
    if chain is None:
        reason = (
            "the spark engine writes whole tables (no feature deltas: features/full_build.py)"
            if on_spark
            else "full build or compaction: whole tables "
            f"(at most {max_deltas} deltas stack on a base; INSTAREC_FEATURE_MAX_DELTA_CHAIN)"
        )
        return {"storage": MetadataValue.text("base"), "storage_reason": MetadataValue.text(reason)}
    return {
        "storage": MetadataValue.text("delta"),
        "delta_chain": MetadataValue.json([*chain.chain, chain.batch]),
        "storage_reason": MetadataValue.text(
            f"delta {len(chain.chain)} of at most {max_deltas} on the base of {chain.chain[0]}: the rows "
            "of the affected users and touched products; every reader resolves the chain "
            "(lake/feature_delta.py)"
        ),
    }


@multi_asset(
    name="curated_features_step",
    outs={
        name: AssetOut(
            io_manager_key="curated_io_manager", description=text, group_name="curated", kinds=CURATED_KINDS
        )
        for name, text in {**FEATURE_SET_DESCRIPTIONS, "affected_users": AFFECTED_USERS_DESCRIPTION}.items()
    },
    ins=CURATED_INS,
    partitions_def=landing_batches,
    pool=HISTORY_POOL,
)
def curated_features_step(
    context: AssetExecutionContext,
    config: CuratedFeaturesConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
    compute: ComputeResource,
    emr_serverless: EmrServerlessResource,
    clean_orders: list[str],
    clean_order_products: list[str],
    clean_products: list[str],
    clean_aisles: str,
    clean_departments: str,
) -> Iterator:
    """Updates the previous batch's tables for what this batch touched (or rebuilds them all). Spark
    in aws mode is an EMR Serverless job run staging under INSTAREC_EMR_STAGING_URI; otherwise the
    step stages in a local folder."""
    snapshot = clean_snapshot(
        clean_orders, clean_order_products, clean_products[-1], clean_aisles, clean_departments
    )
    on_spark = compute.engine == SPARK_ENGINE
    on_emr = on_spark and lake.locations.is_aws
    previous = None if config.full_recompute else _previous_features(context, lake, clean_products)
    scratch = lake.staging_dir(context.run_id, "curated")
    if on_emr:
        staging = lake.staging_prefix(emr_serverless.settings().staging_prefix(context.run_id, "curated"))
    else:
        staging = str(scratch)
    started = time.perf_counter()
    batch = context.partition_key
    with lake_connection(duckdb, lake) as conn:
        update = {"engine": MetadataValue.text(SPARK_ENGINE if on_spark else "duckdb")}
        # Spark updates a previous batch stored whole; after a DuckDB delta it rebuilds (full_build.py).
        after_delta = on_spark and previous is not None and first_delta(conn, previous[1]) is not None
        request = FeatureRequest.from_snapshot(
            snapshot, staging, previous=None if previous is None or after_delta else previous[1]
        )
        chain = None
        if on_spark:
            build = features_on_spark(context, lake, request, emr_serverless if on_emr else None)
        else:
            if previous is not None:
                chain = delta_chain(conn, previous[1], previous[0], batch, lake.feature_max_delta_chain)
            build = run_feature_request(conn, request, delta=chain)
        tables, affected = build.tables, build.affected
        if build.update is None:
            update["mode"] = MetadataValue.text("full")
            if after_delta:
                update["mode_reason"] = MetadataValue.text(SPARK_AFTER_DELTA_REASON)
        else:
            update |= _incremental_metadata(build.update)
        update["build_seconds"] = MetadataValue.float(round(time.perf_counter() - started, 2))
        update.update(_storage_metadata(chain, lake.feature_max_delta_chain, on_spark))
        locations = lake.locations

        def locate(table: str, key: str) -> str:
            """This batch's tables are still staged; earlier ones are in the lake."""
            if key == batch:
                return str(getattr(tables, table).path)
            return locations.partition_uri("curated", table, key)

        feature_list = "\n".join(f"| `{name}` | {FEATURES[name]} |" for name in tables.feature_columns)
        set_metadata = {
            "feature_count": MetadataValue.int(len(tables.feature_columns)),
            "features": MetadataValue.md("| feature | definition |\n| --- | --- |\n" + feature_list),
        }
        # Every table's metadata before the first output: publishing moves a staged file that the
        # sets of a delta batch still resolve against (their product columns).
        outputs = []
        for name in FEATURE_SET_DESCRIPTIONS:
            staged = getattr(tables, name)
            source = feature_source(conn, staged.path, locate)
            metadata = {
                **update,
                "preview": preview(conn, str(staged.path), source=source),
                "history_read": history_read(
                    clean_orders=clean_orders, clean_order_products=clean_order_products
                ),
            }
            if name in ("training_set", "inference_set"):
                metadata.update(set_metadata)
                metadata.update(rows_by_eval_set(conn, source, label_rate=name == "training_set"))
            else:
                metadata["resolved_rows"] = MetadataValue.int(
                    int(conn.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0])
                )
            if name == "training_set":
                stats, correlations = feature_summary(
                    conn,
                    staged.path,
                    tables.feature_columns,
                    locate=locate,
                    total_rows=metadata["resolved_rows"].value,
                )
                metadata.update(
                    {
                        "summary_statistics": MetadataValue.md(stats),
                        "correlations": MetadataValue.md(correlations),
                    }
                )
            outputs.append(Output(staged, output_name=name, metadata=metadata))
        yield from outputs
        by_reason = dict(
            conn.execute(
                "SELECT reason, count(*) FROM read_parquet(?, hive_partitioning = false) GROUP BY 1 ORDER BY 1",
                [str(affected.path)],
            ).fetchall()
        )
        yield Output(
            affected,
            output_name="affected_users",
            metadata={
                "engine": update["engine"],
                "mode": update["mode"],
                "users": MetadataValue.int(affected.row_count),
                "users_by_reason": MetadataValue.json({str(k): int(v) for k, v in by_reason.items()}),
                "preview": preview(conn, str(affected.path)),
            },
        )
