"""Consumption zone: scored candidates, Kaggle next baskets, top-10 recommendations and the serving store."""

import time
from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, Output, asset
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.metadata import history_read, preview
from instarec_assets.consumption.batch_transform import (
    BATCH_TRANSFORM,
    IN_PROCESS,
    model_data_url,
    score_with_batch_transform,
)
from instarec_assets.consumption.recommendations import (
    ExploreInputs,
    feature_batches,
    score_feature_set,
    top_recommendations,
)
from instarec_assets.consumption.similar_items import MIN_SUPPORT, SIMILAR_TOP_K
from instarec_assets.consumption.similar_items import similar_items as similar_items_table
from instarec_assets.consumption.submission import next_baskets
from instarec_assets.lake.duck import StagedParquet
from instarec_assets.ml.graphsage import SIMILARITY_FEATURE, SimilarityLookup, explore_from_lake
from instarec_assets.ml.reorder_model import MODEL_FILE, read_model_card
from instarec_assets.ml.training import load_model, predict
from instarec_assets.partitions import HISTORY_POOL, history_input, landing_batches
from instarec_assets.resources import (
    ComputeResource,
    LakeResource,
    ModelTrainingResource,
    ServingStoreResource,
    lake_connection,
)


class ServingLoadConfig(Config):
    """Run configuration of dynamodb_recommendations."""

    # Load even when the active version was built from a newer batch (a deliberate rollback through
    # the pipeline; `instarec serving activate` switches to a retained version without a run).
    allow_older: bool = False


COMMON = {"partitions_def": landing_batches, "group_name": "consumption", "pool": HISTORY_POOL}


@asset(
    io_manager_key="consumption_io_manager",
    kinds={"xgboost", "parquet"},
    description=(
        "Reorder probability for every candidate of the inference set (test and serving rows), "
        "scored with the model card's features (the GraphSAGE similarity joined from the embeddings)."
    ),
    **COMMON,
)
def reorder_predictions(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    training: ModelTrainingResource,
    compute: ComputeResource,
    inference_set: str,
    xgboost_model: str,
    user_embeddings: str,
    product_embeddings: str,
) -> Output[StagedParquet]:
    booster = load_model(Path(xgboost_model) / MODEL_FILE)
    feature_names = tuple(read_model_card(xgboost_model)["features"])
    out = lake.staging_dir(context.run_id, "reorder_predictions") / "reorder_predictions.parquet"
    started = time.perf_counter()
    with lake_connection(duckdb, lake) as conn:
        computed = {}
        if SIMILARITY_FEATURE in feature_names:
            similarity = SimilarityLookup.from_lake(conn, user_embeddings, product_embeddings)
            computed[SIMILARITY_FEATURE] = similarity.for_rows
        # sagemaker: a batch transform job on the training job's artifact, as the seed system scored
        if training.uses_sagemaker:
            transform = score_with_batch_transform(
                training.sagemaker_client(),
                feature_batches(conn, inference_set, feature_names, computed=computed),
                feature_names,
                model_data_url(read_model_card(xgboost_model)),
                out,
                lake.staging_dir(context.run_id, "reorder_predictions-batch-transform"),
                on_status=lambda status, job: context.log.info(
                    f"batch transform {job['TransformJobName']}: {status}"
                ),
            )
            staged = transform.staged
            scoring = {
                "scoring": MetadataValue.text(BATCH_TRANSFORM),
                "batch_transform_job": MetadataValue.text(transform.job_name),
                "batch_transform": MetadataValue.json(transform.as_metadata()),
            }
        else:
            staged = score_feature_set(
                conn,
                inference_set,
                feature_names,
                lambda rows: predict(booster, rows, threads=compute.threads),
                out,
                computed=computed,
            )
            scoring = {"scoring": MetadataValue.text(IN_PROCESS)}
        scoring["scoring_seconds"] = MetadataValue.float(round(time.perf_counter() - started, 3))
        by_set = conn.execute(
            "SELECT eval_set, count(*), avg(probability) FROM read_parquet(?, hive_partitioning = false) "
            "GROUP BY ALL ORDER BY 1",
            [str(out)],
        ).fetchall()
    return Output(
        staged,
        metadata={
            "model_version": MetadataValue.text(read_model_card(xgboost_model)["model_version"]),
            "rows_by_eval_set": MetadataValue.json({name: int(rows) for name, rows, _ in by_set}),
            "mean_probability_by_eval_set": MetadataValue.json(
                {name: float(mean) for name, _, mean in by_set}
            ),
            **scoring,
        },
    )


@asset(
    io_manager_key="consumption_io_manager",
    kinds={"numpy", "parquet"},
    description=(
        "For each Kaggle test order (a user's latest clean order stored as `test`), the product set "
        "maximising expected F1, or None; None for an order whose user has no candidates."
    ),
    ins={"clean_orders": history_input("clean_orders")},
    **COMMON,
)
def next_basket(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    reorder_predictions: str,
    clean_orders: list[str],
):
    with lake_connection(duckdb, lake) as conn:
        result = next_baskets(conn, reorder_predictions, clean_orders)
    baskets = result.table
    include_none = baskets.column("include_none").to_numpy(zero_copy_only=False)
    sizes = baskets.column("n_products").to_numpy(zero_copy_only=False)
    return Output(
        baskets,
        metadata={
            "orders": MetadataValue.int(baskets.num_rows),
            "orders_without_candidates": MetadataValue.int(result.without_candidates),
            "history_read": history_read(clean_orders=clean_orders),
            "scored_orders_not_test": MetadataValue.int(result.scored_not_test),
            "mean_basket_size": MetadataValue.float(float(sizes.mean()) if baskets.num_rows else 0.0),
            "share_with_none": MetadataValue.float(float(include_none.mean()) if baskets.num_rows else 0.0),
            "preview": MetadataValue.md(baskets.slice(0, 5).to_pandas().to_markdown(index=False)),
        },
    )


@asset(
    io_manager_key="consumption_io_manager",
    kinds={"duckdb", "parquet"},
    description=(
        "Top 10 reorder products per user for their next order, then up to 2 explore items (never "
        "bought, nearest in the GraphSAGE embedding space), with names, aisle, department, model version."
    ),
    **COMMON,
)
def recommendations(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    reorder_predictions: str,
    xgboost_model: str,
    user_embeddings: str,
    product_embeddings: str,
    user_features: str,
    product_features: str,
    user_product_features: str,
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
) -> Output[StagedParquet]:
    scratch = lake.staging_dir(context.run_id, "recommendations")
    out = scratch / "recommendations.parquet"
    model_version = read_model_card(xgboost_model)["model_version"]
    with lake_connection(duckdb, lake) as conn:
        explore = explore_from_lake(
            conn, user_embeddings, product_embeddings, user_product_features, scratch / "explore.parquet"
        )
        staged = top_recommendations(
            conn,
            reorder_predictions,
            clean_products,
            clean_aisles,
            clean_departments,
            model_version,
            out,
            explore=ExploreInputs(str(explore.path), user_features, product_features),
        )
        users, explore_rows, explore_only_users = conn.execute(
            "SELECT count(DISTINCT user_id), count(*) FILTER (WHERE explore), "
            "count(DISTINCT user_id) FILTER (WHERE explore AND rank = 1) "
            "FROM read_parquet(?, hive_partitioning = false)",
            [str(out)],
        ).fetchall()[0]
        table_preview = preview(conn, str(out), rows=12)
    return Output(
        staged,
        metadata={
            "users": MetadataValue.int(int(users)),
            "explore_items": MetadataValue.int(int(explore_rows)),
            "users_with_only_explore_items": MetadataValue.int(int(explore_only_users)),
            "model_version": MetadataValue.text(model_version),
            "preview": table_preview,
        },
    )


@asset(
    io_manager_key="consumption_io_manager",
    kinds={"duckdb", "parquet"},
    description=(
        f"Customers who buy this also buy: the top {SIMILAR_TOP_K} current products per current product "
        f"by co-occurrence in the history's baskets normalised by both products' basket counts, "
        f"pairs sharing at least {MIN_SUPPORT} baskets, never the product itself."
    ),
    ins={"clean_order_products": history_input("clean_order_products")},
    **COMMON,
)
def similar_items(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    clean_order_products: list[str],
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
) -> Output[StagedParquet]:
    out = lake.staging_dir(context.run_id, "similar_items") / "similar_items.parquet"
    with lake_connection(duckdb, lake) as conn:
        staged = similar_items_table(
            conn, clean_order_products, clean_products, clean_aisles, clean_departments, out
        )
        products, mean_score = conn.execute(
            "SELECT count(DISTINCT product_id), avg(score) FROM read_parquet(?, hive_partitioning = false)",
            [str(out)],
        ).fetchall()[0]
        table_preview = preview(conn, str(out), rows=12)
    return Output(
        staged,
        metadata={
            "products_with_similar_items": MetadataValue.int(int(products)),
            "pairs": MetadataValue.int(staged.row_count),
            "mean_score": MetadataValue.float(float(mean_score or 0.0)),
            "history_read": history_read(clean_order_products=clean_order_products),
            "preview": table_preview,
        },
    )


@asset(
    kinds={"sqlite"},
    description=(
        "The recommendations loaded into the serving store as a new version, switched in one step; "
        "a batch older than the active version's is refused (roll back with `instarec serving activate`)."
    ),
    **COMMON,
)
def dynamodb_recommendations(
    context: AssetExecutionContext,
    config: ServingLoadConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
    serving_store: ServingStoreResource,
    recommendations: str,
) -> MaterializeResult:
    with lake_connection(duckdb, lake) as conn:
        table = conn.sql(
            "SELECT * FROM read_parquet($uri, hive_partitioning = false)", params={"uri": recommendations}
        ).to_arrow_table()
    model_version = table.column("model_version")[0].as_py() if table.num_rows else "none"
    report = serving_store.open().load(
        table, model_version=model_version, batch=context.partition_key, allow_older=config.allow_older
    )
    return MaterializeResult(
        metadata={
            "store": MetadataValue.text(serving_store.kind),
            **{name: MetadataValue.text(str(value)) for name, value in report.as_metadata().items()},
        }
    )
