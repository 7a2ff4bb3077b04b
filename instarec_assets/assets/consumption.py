"""Consumption zone: scored candidates, Kaggle next baskets, top-10 recommendations and the serving store."""

import itertools
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetOut,
    AssetRecordsFilter,
    Config,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.deltas import (
    NEXT_BASKET,
    PREDICTIONS,
    BasketCarry,
    base_history,
    basket_carry,
    chain_input,
    consumption_mode,
    latest_metadata,
    partition_chain,
)
from instarec_assets.assets.metadata import history_read, preview
from instarec_assets.consumption.batch_transform import (
    BATCH_TRANSFORM,
    IN_PROCESS,
    model_data_url,
    score_with_batch_transform,
)
from instarec_assets.consumption.cold_start import ColdStartInputs, with_popular_tier
from instarec_assets.consumption.deltas import (
    DELTA,
    SKIP,
    ModelState,
    create_latest_rows_view,
    decide_scoring_mode,
    plan_serving_load,
)
from instarec_assets.consumption.ranking_report import (
    CHECK_METRIC,
    SERVED,
    TOP_FREQUENCY,
    ReportInputs,
    beats_top_frequency,
    build_ranking_report,
    compare_with_previous,
    plot_report,
)
from instarec_assets.consumption.recommendations import (
    EmbeddingFallback,
    ExploreInputs,
    feature_batches,
    personal_explore_items,
    score_feature_set,
    top_recommendations,
)
from instarec_assets.consumption.similar_counts import current_baskets, full_counts, incremental_counts
from instarec_assets.consumption.similar_items import (
    MIN_SUPPORT,
    SIMILAR_TOP_K,
    served_summary,
    similar_items_from_counts,
)
from instarec_assets.consumption.similar_items_evaluation import EVAL_K, evaluate_blends
from instarec_assets.consumption.submission import carried_baskets, next_baskets
from instarec_assets.history import registered_batches
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.duck import StagedParquet, create_view
from instarec_assets.lake.locations import PARTITION_DIR_PATTERN
from instarec_assets.ml.graphsage import (
    FRAMINGS,
    SIMILARITY_FEATURE,
    SimilarityLookup,
    load_embedding_table,
)
from instarec_assets.ml.metrics import png_markdown, table_markdown
from instarec_assets.ml.none_probability import calibration_fingerprint, read_none_calibration
from instarec_assets.ml.ranking import PairedDifference
from instarec_assets.ml.reorder_model import MODEL_FILE, read_model_card
from instarec_assets.ml.training import load_model, predict
from instarec_assets.partitions import HISTORY_POOL, history_input, landing_batches
from instarec_assets.privacy.requests import read_records
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


class PredictionsConfig(Config):
    """Run configuration of reorder_predictions."""

    # Score every user even when the models are the previous batch's (a delta batch re-scores only the
    # users whose features changed; the others keep their scores until the next full batch).
    full_rescore: bool = False


class RankingReportConfig(Config):
    """Run configuration of ranking_report."""

    # Recompute the report on this batch's held-out users even when both models are the ones an
    # earlier report evaluated (by default a kept model's report is carried from that batch).
    recompute_for_kept_models: bool = False


def _model_state(context: AssetExecutionContext, card: dict) -> ModelState:
    """This batch's model versions and whether each was fitted on it (GraphSAGE's from its
    embeddings' materialisation, which reorder_predictions reads)."""
    embeddings = latest_metadata(context.instance, "user_embeddings", context.partition_key) or {}
    return ModelState(
        xgboost_version=card["model_version"],
        xgboost_retrained=bool(card.get("retrain", {}).get("retrain", True)),
        graphsage_version=embeddings.get("model_version"),
        graphsage_retrained=bool(embeddings.get("retrained", True)),
    )


COMMON = {"partitions_def": landing_batches, "group_name": "consumption", "pool": HISTORY_POOL}

# What shoppers are served should follow each weekly landing batch: warn once a day late, fail after a
# second batch is missed (shown as asset health in the UI; the instance needs `freshness: enabled`).
SERVED_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(days=15), warn_window=timedelta(days=8))


@asset(
    io_manager_key="consumption_io_manager",
    kinds={"xgboost", "parquet"},
    description=(
        "Reorder probability for every candidate of the inference set (test and serving rows), "
        "scored with the model card's features (the GraphSAGE similarity joined from the embeddings). "
        "Decides whether this batch is full or a delta: with the previous batch's models, only the "
        "affected users are re-scored (`mode`, `delta_base`)."
    ),
    **COMMON,
)
def reorder_predictions(
    context: AssetExecutionContext,
    config: PredictionsConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
    training: ModelTrainingResource,
    compute: ComputeResource,
    serving_store: ServingStoreResource,
    inference_set: str,
    affected_users: str,
    xgboost_model: str,
    user_embeddings: str,
    product_embeddings: str,
) -> Output[StagedParquet]:
    booster = load_model(Path(xgboost_model) / MODEL_FILE)
    card = read_model_card(xgboost_model)
    feature_names = tuple(card["features"])
    out = lake.staging_dir(context.run_id, "reorder_predictions") / "reorder_predictions.parquet"
    started = time.perf_counter()
    models = _model_state(context, card)
    previous_batch, base, chain = base_history(context)
    with lake_connection(duckdb, lake) as conn:
        affected_count, features_rebuilt = conn.execute(
            "SELECT count(*), coalesce(bool_or(reason = 'full build'), false) "
            "FROM read_parquet(?, hive_partitioning = false)",
            [affected_users],
        ).fetchall()[0]
        decision = decide_scoring_mode(
            previous_batch,
            base,
            chain,
            models,
            full_rescore=config.full_rescore,
            features_rebuilt=bool(features_rebuilt),
            max_chain=serving_store.max_delta_chain,
        )
        context.log.info(f"reorder_predictions: {decision.mode} ({decision.reason})")
        users_uri = affected_users if decision.mode == DELTA else None
        computed = {}
        if SIMILARITY_FEATURE in feature_names:
            similarity = SimilarityLookup.from_lake(conn, user_embeddings, product_embeddings)
            computed[SIMILARITY_FEATURE] = similarity.for_rows
        # sagemaker: a batch transform job on the training job's artifact, as the seed system scored
        if training.uses_sagemaker:
            transform = score_with_batch_transform(
                training.sagemaker_client(),
                feature_batches(conn, inference_set, feature_names, computed=computed, users_uri=users_uri),
                feature_names,
                model_data_url(card),
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
                users_uri=users_uri,
            )
            scoring = {"scoring": MetadataValue.text(IN_PROCESS)}
        scoring["scoring_seconds"] = MetadataValue.float(round(time.perf_counter() - started, 3))
        by_set = conn.execute(
            "SELECT eval_set, count(*), avg(probability) FROM read_parquet(?, hive_partitioning = false) "
            "GROUP BY ALL ORDER BY 1",
            [str(out)],
        ).fetchall()
        users_scored = conn.execute(
            "SELECT count(DISTINCT user_id) FROM read_parquet(?, hive_partitioning = false)", [str(out)]
        ).fetchall()[0][0]
    return Output(
        staged,
        metadata={
            "mode": MetadataValue.text(decision.mode),
            "mode_reason": MetadataValue.text(decision.reason),
            "delta_base": MetadataValue.text(decision.base or "none"),
            "delta_chain_length": MetadataValue.int(decision.chain_length),
            "users": MetadataValue.int(int(users_scored)),
            "affected_users": MetadataValue.int(int(affected_count)),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
            "model_version": MetadataValue.text(card["model_version"]),
            "graphsage_model_version": MetadataValue.text(models.graphsage_version or "unknown"),
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
        "maximising expected F1, or None; None for an order whose user has no candidates. Reads the "
        "predictions' chain (the newest full partition, then each delta), each user's newest rows."
    ),
    ins={"clean_orders": history_input("clean_orders"), PREDICTIONS: chain_input(PREDICTIONS)},
    **COMMON,
)
def next_basket(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    reorder_predictions: dict[str, str] | str,
    xgboost_model: str,
    clean_orders: list[str],
):
    started = time.perf_counter()
    mode, base = consumption_mode(context)
    chain = partition_chain(context, PREDICTIONS, reorder_predictions)
    calibration = read_none_calibration(xgboost_model)
    fingerprint = calibration_fingerprint(calibration)
    locations = lake.locations
    if not clean_orders or _batch_of(clean_orders[-1]) != context.partition_key:
        carry = BasketCarry(None, None, "this batch stores no clean orders of its own")
    else:
        carry = basket_carry(
            context.instance,
            chain,
            fingerprint,
            lambda key: locations.partition_uri("consumption", NEXT_BASKET, key),
            locations.filesystem.exists,
        )
    uris = [uri for _, uri in chain]
    with lake_connection(duckdb, lake) as conn:
        if carry.previous is None:
            result = next_baskets(conn, uris, clean_orders, calibration)
        else:
            result = carried_baskets(conn, carry.uri, uris, clean_orders, calibration)
    baskets = result.table
    include_none = baskets.column("include_none").to_numpy(zero_copy_only=False)
    sizes = baskets.column("n_products").to_numpy(zero_copy_only=False)
    return Output(
        baskets,
        metadata={
            "orders": MetadataValue.int(baskets.num_rows),
            # every test order, always: the baskets are whole, the predictions may be a delta
            "mode": MetadataValue.text("full"),
            "selection": MetadataValue.text("carried" if carry.previous else "every test order"),
            "selection_reason": MetadataValue.text(carry.reason),
            "carried_orders": MetadataValue.int(result.carried_orders),
            "recomputed_users": MetadataValue.int(result.recomputed_users),
            "predictions_mode": MetadataValue.text(mode),
            "delta_base": MetadataValue.text(base or "none"),
            "predictions_chain": MetadataValue.json([batch for batch, _ in chain]),
            "none_probability_fingerprint": MetadataValue.text(fingerprint),
            "users": MetadataValue.int(len(set(baskets.column("user_id").to_pylist()))),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
            "orders_without_candidates": MetadataValue.int(result.without_candidates),
            "history_read": history_read(clean_orders=clean_orders),
            # of the orders selected in this run (a carried batch's others were counted before)
            "scored_orders_not_test": MetadataValue.int(result.scored_not_test),
            "mean_basket_size": MetadataValue.float(float(sizes.mean()) if baskets.num_rows else 0.0),
            "share_with_none": MetadataValue.float(float(include_none.mean()) if baskets.num_rows else 0.0),
            "none_probability": MetadataValue.text(
                "calibrated (held-out choice, none_calibration.json)" if calibration else "independence"
            ),
            "preview": MetadataValue.md(baskets.slice(0, 5).to_pandas().to_markdown(index=False)),
        },
    )


@asset(
    io_manager_key="consumption_io_manager",
    kinds={"duckdb", "parquet"},
    description=(
        "Top 10 reorder products per user for their next order, then up to 2 explore items (never "
        "bought, current: the co-purchase neighbours of what the user buys, filled from the GraphSAGE "
        "embedding neighbours), then reorder candidates 11 to 50 (what request filters draw on), "
        "current products only, with names, aisle, department, model version. Shoppers known to the "
        "lake without a scored candidate (cold start) get popular items instead, tilted to the "
        "departments of a first basket; `source` says model, explore or popular per row. In a delta "
        "batch only the affected users' lists (the serving store keeps everyone else's)."
    ),
    ins={
        "clean_orders": history_input("clean_orders"),
        "clean_order_products": history_input("clean_order_products"),
    },
    freshness_policy=SERVED_FRESHNESS,
    **COMMON,
)
def recommendations(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    reorder_predictions: str,
    affected_users: str,
    xgboost_model: str,
    user_embeddings: str,
    product_embeddings: str,
    user_features: str,
    product_features: str,
    user_product_features: str,
    similar_items: str,
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
    clean_orders: list[str],
    clean_order_products: list[str],
) -> Output[StagedParquet]:
    started = time.perf_counter()
    scratch = lake.staging_dir(context.run_id, "recommendations")
    out = scratch / "recommendations.parquet"
    model_version = read_model_card(xgboost_model)["model_version"]
    mode, base = consumption_mode(context)
    with lake_connection(duckdb, lake) as conn:
        # a delta batch lists only the affected users (its predictions hold only theirs)
        user_ids = None
        if mode == DELTA:
            user_ids = conn.execute(
                "SELECT user_id FROM read_parquet(?, hive_partitioning = false) ORDER BY 1", [affected_users]
            ).fetchnumpy()["user_id"]
        explore = personal_explore_items(
            conn,
            similar_items,
            user_product_features,
            clean_products,
            EmbeddingFallback(user_embeddings, product_embeddings),
            scratch / "explore.parquet",
            user_ids=None if user_ids is None else user_ids.tolist(),
        )
        scored = top_recommendations(
            conn,
            reorder_predictions,
            clean_products,
            clean_aisles,
            clean_departments,
            model_version,
            scratch / "scored.parquet",
            explore=ExploreInputs(str(explore.path), user_features, product_features),
        )
        staged = with_popular_tier(
            conn,
            str(scored.path),
            ColdStartInputs(
                clean_orders,
                clean_order_products,
                clean_products,
                clean_aisles,
                clean_departments,
                users=affected_users if mode == DELTA else None,
            ),
            model_version,
            out,
        )
        users, explore_rows, explore_only_users, cold_users = conn.execute(
            "SELECT count(DISTINCT user_id), count(*) FILTER (WHERE explore), "
            "count(DISTINCT user_id) FILTER (WHERE explore AND rank = 1), "
            "count(DISTINCT user_id) FILTER (WHERE source = 'popular') "
            "FROM read_parquet(?, hive_partitioning = false)",
            [str(out)],
        ).fetchall()[0]
        diversity = conn.execute(EXPLORE_DIVERSITY_SQL, [str(out)]).fetchall()[0]
        sources = dict(
            conn.execute(
                "SELECT explore_source, count(*) FROM read_parquet(?, hive_partitioning = false) GROUP BY 1",
                [str(explore.path)],
            ).fetchall()
        )
        table_preview = preview(conn, str(out), rows=12)
    users_shown, distinct_items, top_item_users = (int(value or 0) for value in diversity)
    return Output(
        staged,
        metadata={
            "mode": MetadataValue.text(mode),
            "delta_base": MetadataValue.text(base or "none"),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
            "users": MetadataValue.int(int(users)),
            "cold_start_users": MetadataValue.int(int(cold_users)),
            "popular_tier_share": MetadataValue.float(int(cold_users) / int(users) if users else 0.0),
            "explore_items": MetadataValue.int(int(explore_rows)),
            "users_with_only_explore_items": MetadataValue.int(int(explore_only_users)),
            "explore_distinct_items": MetadataValue.int(distinct_items),
            "explore_distinct_items_per_user": MetadataValue.float(
                distinct_items / users_shown if users_shown else 0.0
            ),
            "explore_top_item_share": MetadataValue.float(
                top_item_users / users_shown if users_shown else 0.0
            ),
            "explore_sources": MetadataValue.json({str(k): int(v) for k, v in sorted(sources.items())}),
            "model_version": MetadataValue.text(model_version),
            "history_read": history_read(
                clean_orders=clean_orders, clean_order_products=clean_order_products
            ),
            "preview": table_preview,
        },
    )


# Diversity of the served explore items: users shown one, distinct products, and the users shown the
# most common one.
EXPLORE_DIVERSITY_SQL = """
WITH shown AS (
    SELECT user_id, product_id FROM read_parquet(?, hive_partitioning = false) WHERE explore
)
SELECT (SELECT count(DISTINCT user_id) FROM shown), (SELECT count(DISTINCT product_id) FROM shown),
       (SELECT max(users) FROM (SELECT count(DISTINCT user_id) AS users FROM shown GROUP BY product_id))
"""


class SimilarItemsConfig(Config):
    """Run configuration of similar_items."""

    # Count every basket of the history again instead of updating the previous batch's counts.
    full_recompute: bool = False
    # Choose the blend weight on held-out baskets even when the product embeddings' model was kept.
    evaluate_blend: bool = False


SIMILAR_COUNTS = "similar_item_counts"
# A full recount once the weak pairs touched since the last full count pass this share of that
# count's weak pairs: the incremental files stop growing, and a full count costs about one merge.
COUNTS_REBASE_SHARE = 0.5


def _batch_of(uri: str) -> str:
    match = PARTITION_DIR_PATTERN.search(uri)
    return "-".join(match.groups()) if match else ""


def _counts_plan(
    context: AssetExecutionContext, lake: LakeResource, config: SimilarItemsConfig, forget_records: int
) -> tuple[str, dict | None]:
    """(why, previous) for this batch's co-purchase counts: previous is None for a full count, else
    the latest earlier counts partition (`batch`, `uri`, `base`, `base_uri`)."""
    if config.full_recompute:
        return "full: run config full_recompute", None
    locations = lake.locations
    earlier = locations.partitions_before("consumption", SIMILAR_COUNTS, context.partition_key)
    if not earlier:
        return "full: no earlier counts", None
    batch, uri = list(earlier.items())[-1]
    recorded = latest_metadata(context.instance, SIMILAR_COUNTS, batch) or {}
    base = recorded.get("counts_base")
    if base is None or base not in earlier:
        return f"full: the counts of {batch} record no base", None
    if recorded.get("min_support") != MIN_SUPPORT:
        return f"full: min_support changed since {batch}", None
    if recorded.get("forget_records") != forget_records:
        return f"full: a forget request since the counts of {batch} (its baskets must leave the counts)", None
    weak, base_weak = recorded.get("weak_pairs", 0), recorded.get("base_weak_pairs", 0)
    if base != batch and weak > COUNTS_REBASE_SHARE * max(base_weak, 1):
        return (
            f"full: {weak:,} weak pairs touched since the full count of {base}, over "
            f"{COUNTS_REBASE_SHARE:g} x its {base_weak:,}",
            None,
        )
    base_uri = earlier.get(base, uri)
    return f"incremental: the counts of {batch} plus the batches after it", {
        "batch": batch,
        "uri": uri,
        "base": base,
        "base_uri": base_uri,
        "base_weak_pairs": base_weak,
    }


def _carried_blend(context: AssetExecutionContext, previous_batch: str | None) -> tuple[dict | None, str]:
    """The previous similar items' blend choice when the product embeddings come from the same kept
    GraphSAGE model (the held-out evaluation only moves when the embeddings are retrained), and why."""
    embeddings = latest_metadata(context.instance, "product_embeddings", context.partition_key) or {}
    version = embeddings.get("model_version")
    if embeddings.get("retrained", True):
        return None, f"evaluated: GraphSAGE model {version or 'unknown'} was fitted on this batch"
    if previous_batch is None:
        return None, "evaluated: no earlier similar items"
    previous = latest_metadata(context.instance, "similar_items", previous_batch) or {}
    if previous.get("graphsage_model_version") != version or "blend_weight" not in previous:
        return None, f"evaluated: the similar items of {previous_batch} used other embeddings"
    chosen_in = previous.get("blend_chosen_in", previous_batch)
    return previous, f"carried: GraphSAGE model {version} kept, weight chosen in batch {chosen_in}"


@multi_asset(
    outs={
        "similar_items": AssetOut(
            io_manager_key="consumption_io_manager",
            description=(
                f"Customers who buy this also buy: the top {SIMILAR_TOP_K} current products per current "
                f"product by co-occurrence in the history's baskets normalised by both products' basket "
                f"counts (pairs sharing at least {MIN_SUPPORT} baskets), blended with the GraphSAGE "
                "product embeddings' cosine by the weight that wins on each user's held-out latest "
                "basket (0: co-occurrence alone; chosen again when the embeddings are retrained), "
                "never the product itself. Ranked from similar_item_counts, not from the baskets."
            ),
            kinds={"duckdb", "parquet"},
        ),
        SIMILAR_COUNTS: AssetOut(
            io_manager_key="consumption_io_manager",
            description=(
                "The history's co-purchase counts (pairs with at least "
                f"{MIN_SUPPORT} shared baskets, the weaker pairs touched since the last full count, "
                "each product's basket count): the previous batch's plus this batch's baskets, so a "
                "batch costs what it brings. `mode` says full or incremental and why."
            ),
            kinds={"duckdb", "parquet"},
        ),
    },
    ins={
        "clean_orders": history_input("clean_orders"),
        "clean_order_products": history_input("clean_order_products"),
    },
    partitions_def=landing_batches,
    group_name="consumption",
    pool=HISTORY_POOL,
)
def similar_items(
    context: AssetExecutionContext,
    config: SimilarItemsConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
    clean_orders: list[str],
    clean_order_products: list[str],
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
    product_embeddings: str,
) -> Iterator[Output]:
    scratch = lake.staging_dir(context.run_id, "similar_items")
    started = time.perf_counter()
    forget_records = len(read_records(lake.locations))
    counts_reason, previous = _counts_plan(context, lake, config, forget_records)
    with lake_connection(duckdb, lake) as conn:
        if previous is None:
            counts = full_counts(
                conn, clean_order_products, scratch / "similar_item_counts.parquet", MIN_SUPPORT
            )
            base, base_weak = context.partition_key, counts.weak_pairs
        else:
            earlier = [uri for uri in clean_order_products if _batch_of(uri) <= previous["batch"]]
            new = [uri for uri in clean_order_products if _batch_of(uri) > previous["batch"]]
            counts = incremental_counts(
                conn,
                earlier,
                new,
                previous["uri"],
                previous["base_uri"],
                scratch / "similar_item_counts.parquet",
                MIN_SUPPORT,
                previous_is_base=previous["base"] == previous["batch"],
            )
            base, base_weak = previous["base"], previous["base_weak_pairs"]
        counts_seconds = time.perf_counter() - started
        context.log.info(f"similar items: counts {counts_reason} ({counts_seconds:.1f}s)")
        create_view(conn, "similar_history_lines", clean_order_products, CLEAN_ORDER_PRODUCTS_SCHEMA)
        baskets = current_baskets(conn, "similar_history_lines", clean_products)
        embeddings = {
            framing: load_embedding_table(conn, product_embeddings, framing, "product_id")
            for framing in FRAMINGS
        }
        carried, blend_reason = (
            (None, "evaluated: run config evaluate_blend")
            if config.evaluate_blend
            else _carried_blend(context, previous["batch"] if previous else None)
        )
        evaluation = None
        if carried is None:
            evaluation = evaluate_blends(
                conn,
                clean_orders,
                clean_order_products,
                clean_products,
                embeddings["target"],
                counts_uri=str(counts.staged.path),
                work_dir=scratch / "blend_evaluation",
            )
            weight, chosen_in = evaluation.chosen_weight, context.partition_key
            evaluation_md, evaluation_detail = evaluation.markdown(), evaluation.as_dict()
        else:
            weight, chosen_in = float(carried["blend_weight"]), str(carried.get("blend_chosen_in"))
            evaluation_md, evaluation_detail = (
                carried.get("evaluation", ""),
                carried.get("evaluation_detail", {}),
            )
        context.log.info(f"similar items: blend weight {weight} ({blend_reason})")
        out = scratch / "similar_items.parquet"
        staged = similar_items_from_counts(
            conn,
            str(counts.staged.path),
            baskets,
            clean_products,
            clean_aisles,
            clean_departments,
            out,
            embeddings=embeddings["serving"],
            weight=weight,
            stored=counts.stored,
        )
        served = served_summary(conn, str(out), clean_products, EVAL_K)
        table_preview = preview(conn, str(out), rows=12)
    read = history_read(clean_orders=clean_orders, clean_order_products=clean_order_products)
    mode = "full" if previous is None else "incremental"
    yield Output(
        counts.staged,
        output_name=SIMILAR_COUNTS,
        metadata={
            "mode": MetadataValue.text(mode),
            "mode_reason": MetadataValue.text(counts_reason),
            "counts_base": MetadataValue.text(base),
            "counts_previous": MetadataValue.text(previous["batch"] if previous else "none"),
            "min_support": MetadataValue.int(MIN_SUPPORT),
            "forget_records": MetadataValue.int(forget_records),
            "lines_counted": MetadataValue.int(counts.new_lines),
            "late_lines": MetadataValue.int(counts.late_lines),
            "delta_pairs": MetadataValue.int(counts.delta_pairs),
            "strong_pairs": MetadataValue.int(counts.strong_pairs),
            "weak_pairs": MetadataValue.int(counts.weak_pairs),
            "moved_products": MetadataValue.int(counts.moved_products),
            "base_weak_pairs": MetadataValue.int(int(base_weak)),
            "seconds": MetadataValue.float(round(counts_seconds, 3)),
            "history_read": read,
        },
    )
    yield Output(
        staged,
        output_name="similar_items",
        metadata={
            "mode": MetadataValue.text(mode),
            "mode_reason": MetadataValue.text(
                f"co-occurrence {counts_reason}; every anchor ranked again from the counts"
                + (
                    f" (the batch moved {counts.moved_products:,} products' basket counts, which the "
                    "scores divide by, and lift's basket total: no list can be carried)"
                    if previous is not None
                    else ""
                )
            ),
            "products_with_similar_items": MetadataValue.int(served.products),
            "pairs": MetadataValue.int(staged.row_count),
            "mean_score": MetadataValue.float(served.mean_score),
            "blend_weight": MetadataValue.float(weight),
            "blend_mode": MetadataValue.text(blend_reason),
            "blend_chosen_in": MetadataValue.text(chosen_in),
            "graphsage_model_version": MetadataValue.text(
                str(
                    (
                        latest_metadata(context.instance, "product_embeddings", context.partition_key) or {}
                    ).get("model_version", "unknown")
                )
            ),
            f"coverage@{EVAL_K}": MetadataValue.float(served.coverage),
            "embedding_filled_pairs": MetadataValue.int(served.filled_pairs),
            "evaluation": MetadataValue.md(evaluation_md or "_carried: no table_"),
            "evaluation_detail": MetadataValue.json(evaluation_detail),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
            "history_read": read,
            "preview": table_preview,
        },
    )


@asset(
    kinds={"sqlite"},
    description=(
        "The recommendations and the similar items loaded into the serving store as one new version, "
        "switched in one step; a batch older than the active version's is refused (roll back with "
        "`instarec serving activate`). Waits for the ranking report: a served ranking measurably worse "
        "than personal top-frequency (its blocking check) is never loaded."
    ),
    # Declared so the blocking ranking check gates the serving load; the report's data is not read.
    deps=["ranking_report"],
    ins={"recommendations": chain_input("recommendations")},
    freshness_policy=SERVED_FRESHNESS,
    **COMMON,
)
def dynamodb_recommendations(
    context: AssetExecutionContext,
    config: ServingLoadConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
    serving_store: ServingStoreResource,
    recommendations: dict[str, str] | str,
    similar_items: str,
) -> MaterializeResult:
    started = time.perf_counter()
    mode, base = consumption_mode(context)
    chain = partition_chain(context, "recommendations", recommendations)
    store = serving_store.open()
    active = store.current_info()
    with lake_connection(duckdb, lake) as conn:
        chain_rows = [
            (batch, int(conn.execute(_ROW_COUNT_SQL, [uri]).fetchall()[0][0])) for batch, uri in chain
        ]
        plan = plan_serving_load(mode, base, active.get("batch") if active else None, chain_rows)
        context.log.info(f"serving load: {plan.load} ({plan.line})")
        if plan.load == SKIP:
            return MaterializeResult(
                metadata={
                    "store": MetadataValue.text(serving_store.kind),
                    "mode": MetadataValue.text(mode),
                    "load": MetadataValue.text(SKIP),
                    "loaded": MetadataValue.text(plan.line),
                    "delta_base": MetadataValue.text(base or "none"),
                    "recommendations_chain": MetadataValue.json([batch for batch, _ in chain]),
                    "users_in_partition": MetadataValue.int(0),
                    "active_version": MetadataValue.text(str(active.get("version"))),
                    "active_batch": MetadataValue.text(str(active.get("batch"))),
                    "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
                }
            )
        delta = plan.load == DELTA
        if delta:
            sql, params = _PARTITION_ROWS_SQL, {"uri": chain[-1][1]}
        else:
            # the current lists of every user: each user's newest partition of the chain
            create_latest_rows_view(conn, "served_recommendations", [uri for _, uri in chain])
            sql, params = "SELECT * FROM served_recommendations ORDER BY user_id, rank", None
        partition_users = conn.execute(
            "SELECT count(DISTINCT user_id) FROM read_parquet(?, hive_partitioning = false)", [chain[-1][1]]
        ).fetchall()[0][0]
        similar = conn.sql(
            "SELECT * FROM read_parquet($uri, hive_partitioning = false)", params={"uri": similar_items}
        ).to_arrow_table()
        # Streamed in batches: the store turns rows into Python tuples, and all 8.6M rows of the
        # full-size lists at once took the serving load to 8.2 GiB (bench, 2026-12-06). The model
        # version is the first row's, read from the batches up to the first non-empty one.
        batches = iter(conn.sql(sql, params=params).to_arrow_reader(SERVING_LOAD_BATCH_ROWS))
        leading = []
        for batch in batches:
            leading.append(batch)
            if batch.num_rows:
                break
        model_version = (
            leading[-1].column("model_version")[0].as_py() if leading and leading[-1].num_rows else "none"
        )
        report = store.load(
            itertools.chain(leading, batches),
            model_version=model_version,
            batch=context.partition_key,
            allow_older=config.allow_older,
            similar_items=similar,
            delta=delta,
        )
    loaded = plan.line
    return MaterializeResult(
        metadata={
            "store": MetadataValue.text(serving_store.kind),
            "mode": MetadataValue.text(mode),
            "load": MetadataValue.text(DELTA if delta else "full"),
            "loaded": MetadataValue.text(loaded),
            "delta_base": MetadataValue.text(base or "none"),
            "recommendations_chain": MetadataValue.json([batch for batch, _ in chain]),
            "users_in_partition": MetadataValue.int(int(partition_users)),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
            **{name: MetadataValue.text(str(value)) for name, value in report.as_metadata().items()},
        }
    )


SERVING_LOAD_BATCH_ROWS = 500_000
_PARTITION_ROWS_SQL = "SELECT * FROM read_parquet($uri, hive_partitioning = false) ORDER BY user_id, rank"
_ROW_COUNT_SQL = "SELECT count(*) FROM read_parquet(?, hive_partitioning = false)"


RANKING_CHECK = "served_beats_top_frequency"


def previous_report_record(context: AssetExecutionContext) -> tuple[str, dict[str, MetadataValue]] | None:
    """(batch, metadata) of the latest earlier batch's ranking report materialisation; None when no
    earlier batch has one."""
    instance = context.instance
    for batch in reversed([key for key in registered_batches(instance) if key < context.partition_key]):
        found = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[batch]), limit=1
        ).records
        metadata = found[0].asset_materialization.metadata if found else {}
        if "rows_by_method" in metadata:
            return batch, dict(metadata)
    return None


def previous_ranking_report(context: AssetExecutionContext) -> tuple[str, dict, str] | None:
    """(batch, rows by method, model version) of the latest earlier batch's ranking report, read
    from that materialisation's metadata in the instance; None when no earlier batch has one."""
    found = previous_report_record(context)
    if found is None:
        return None
    batch, metadata = found
    version = metadata.get("model_version")
    return batch, metadata["rows_by_method"].value, str(version.value) if version else "unknown"


def carried_report(
    context: AssetExecutionContext, models: ModelState, recompute: bool
) -> tuple[tuple[str, dict[str, MetadataValue]] | None, str]:
    """The earlier report to carry, when both models are the ones it evaluated (a report describes a
    model version: re-running it for a kept model re-measures the same models on a slightly moved
    held-out set, the increment's largest step at full size), and why; (None, why) to recompute."""
    if recompute:
        return None, "recomputed: recompute_for_kept_models is set"
    if models.xgboost_retrained or models.graphsage_retrained:
        return None, "recomputed: a model was fitted on this batch"
    found = previous_report_record(context)
    if found is None:
        return None, "recomputed: no earlier report"
    batch, metadata = found
    versions = tuple(
        metadata[name].value if name in metadata else None
        for name in ("model_version", "graphsage_model_version")
    )
    if versions != (models.xgboost_version, models.graphsage_version):
        return None, f"recomputed: the report of {batch} evaluated other model versions {versions}"
    if "served_vs_top_frequency" not in metadata:
        return None, f"recomputed: the report of {batch} recorded no paired difference for its check"
    computed_in = metadata["computed_in"].value if "computed_in" in metadata else batch
    return found, (
        f"carried: XGBoost {models.xgboost_version} and GraphSAGE {models.graphsage_version} kept; "
        f"the report computed on batch {computed_in}'s held-out users (recompute_for_kept_models recomputes)"
    )


def ranking_check_result(table: pd.DataFrame, difference: PairedDifference | None = None) -> AssetCheckResult:
    """The blocking check: the served ranking beats personal top-frequency on NDCG@10. Not beating it
    is an ERROR (blocks) when served is worse beyond noise, a WARN when within it."""
    verdict = beats_top_frequency(table, difference)
    by_method = table.set_index("method")[CHECK_METRIC]
    metadata = {
        "served_ndcg_at_10": MetadataValue.float(float(by_method[SERVED])),
        "top_frequency_ndcg_at_10": MetadataValue.float(float(by_method[TOP_FREQUENCY])),
    }
    if difference is not None:
        metadata |= {
            "paired_difference": MetadataValue.float(difference.mean),
            "paired_difference_standard_error": MetadataValue.float(difference.standard_error),
            "users": MetadataValue.int(difference.n_users),
        }
    return AssetCheckResult(
        check_name=RANKING_CHECK,
        passed=verdict.passed,
        severity=AssetCheckSeverity.ERROR if verdict.blocks else AssetCheckSeverity.WARN,
        description=verdict.line,
        metadata=metadata,
    )


@asset(
    io_manager_key="consumption_io_manager",
    kinds={"duckdb", "parquet"},
    description=(
        "Ranking quality on held-out users' next orders (precision, recall, NDCG, hit rate @3/10, "
        "MAP@10, coverage, repeat/explore): the served lists replayed, XGBoost and GraphSAGE alone, "
        "and the personal top-frequency, last-order and popularity baselines; explore hit rate@2 and "
        "diversity against a popular-items explore baseline; compared with the previous batch's report. "
        "A batch that keeps both models carries the report of the batch that evaluated them "
        "(recompute_for_kept_models recomputes)."
    ),
    ins={"clean_order_products": history_input("clean_order_products")},
    check_specs=[
        AssetCheckSpec(
            RANKING_CHECK,
            asset="ranking_report",
            blocking=True,
            description=(
                "The served ranking's NDCG@10 beats personal top-frequency's; blocks (ERROR) when it is "
                "more than 2 standard errors of the per-user paired difference worse, warns when within."
            ),
        )
    ],
    **COMMON,
)
def ranking_report(
    context: AssetExecutionContext,
    config: RankingReportConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
    compute: ComputeResource,
    training_set: str,
    xgboost_model: str,
    user_embeddings: str,
    product_embeddings: str,
    user_features: str,
    product_features: str,
    user_product_features: str,
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
    clean_order_products: list[str],
    similar_item_counts: str,
) -> Iterator:
    scratch = lake.staging_dir(context.run_id, "ranking_report")
    started = time.perf_counter()
    models = _model_state(context, read_model_card(xgboost_model))
    carried, reason = carried_report(context, models, config.recompute_for_kept_models)
    out = scratch / "ranking_report.parquet"
    if carried is not None:
        batch, metadata = carried
        with lake_connection(duckdb, lake) as conn:
            uri = lake.locations.partition_uri("consumption", "ranking_report", batch)
            table = conn.execute("SELECT * FROM read_parquet(?, hive_partitioning = false)", [uri]).df()
        table.to_parquet(out, index=False)
        difference = metadata["served_vs_top_frequency"].value
        yield Output(
            StagedParquet(out, len(table)),
            metadata={
                **metadata,
                "computed_in": metadata.get("computed_in", MetadataValue.text(batch)),
                "previous_report": MetadataValue.text(f"batch {batch}, model {models.xgboost_version}"),
                "change_since_previous": MetadataValue.md("none: the same models' report, carried"),
                "history_read": history_read(clean_order_products=clean_order_products),
                "mode": MetadataValue.text("carried"),
                "mode_reason": MetadataValue.text(reason),
                "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
            },
        )
        yield ranking_check_result(table, PairedDifference(**difference) if difference else None)
        return
    inputs = ReportInputs(
        training_set=training_set,
        xgboost_model=xgboost_model,
        user_embeddings=user_embeddings,
        product_embeddings=product_embeddings,
        user_features=user_features,
        product_features=product_features,
        user_product_features=user_product_features,
        clean_products=clean_products,
        clean_aisles=clean_aisles,
        clean_departments=clean_departments,
        clean_order_products=clean_order_products,
        similar_item_counts=similar_item_counts,
    )
    with lake_connection(duckdb, lake) as conn:
        report = build_ranking_report(conn, inputs, scratch / "work", threads=compute.threads)
    previous = previous_ranking_report(context)
    table = report.table.assign(batch=context.partition_key, model_version=report.model_version)
    table.to_parquet(out, index=False)
    plot = plot_report(report.table, scratch)
    comparison = compare_with_previous(report.table, previous[1] if previous else None)
    difference = report.served_vs_top_frequency
    yield Output(
        StagedParquet(out, len(table)),
        metadata={
            "model_version": MetadataValue.text(report.model_version),
            "graphsage_model_version": MetadataValue.text(str(models.graphsage_version)),
            "computed_in": MetadataValue.text(context.partition_key),
            "held_out_users": MetadataValue.int(report.n_users),
            "evaluation_users": MetadataValue.text(report.users),
            "catalogue_size": MetadataValue.int(report.catalogue_size),
            "served_ndcg_at_10": MetadataValue.float(
                float(report.table.set_index("method").at[SERVED, CHECK_METRIC])
            ),
            "served_vs_top_frequency": MetadataValue.json(
                {
                    "mean": float(difference.mean),
                    "standard_error": float(difference.standard_error),
                    "n_users": int(difference.n_users),
                }
                if difference is not None
                else {}
            ),
            "ranking": MetadataValue.md(table_markdown(report.table)),
            "explore": MetadataValue.md(table_markdown(report.explore)),
            "plot_ranking": MetadataValue.md(png_markdown(plot, "ranking report")),
            "previous_report": MetadataValue.text(
                f"batch {previous[0]}, model {previous[2]}" if previous else "none (first report)"
            ),
            "change_since_previous": MetadataValue.md(table_markdown(comparison)),
            "history_read": history_read(clean_order_products=clean_order_products),
            "rows_by_method": MetadataValue.json(report.rows_by_method()),
            "mode": MetadataValue.text("incremental"),
            "mode_reason": MetadataValue.text(
                f"{reason}, on this batch's held-out users (their targets change every batch); the "
                "explore co-purchase similarity is this batch's similar_item_counts minus the target "
                "orders' baskets, no recount of the history's baskets"
            ),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        },
    )
    yield ranking_check_result(report.table, difference)
