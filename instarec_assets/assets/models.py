"""Models: the XGBoost reorder model, trained on the partition's training set and judged against baselines."""

from collections.abc import Iterator
from functools import partial

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
    asset,
)
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.memory import release_freed_memory
from instarec_assets.assets.retraining import batches_since, decision_metadata, previous_model
from instarec_assets.features import FEATURE_COLUMNS
from instarec_assets.io_managers import StagedArtifacts
from instarec_assets.ml.evaluation import BasketEvaluation, compare_with_baselines
from instarec_assets.ml.graphsage import SIMILARITY_FEATURE, SimilarityLookup
from instarec_assets.ml.metrics import png_markdown, table_markdown
from instarec_assets.ml.reorder_model import (
    MODEL_CARD_FILE,
    decide_reorder_model,
    kept_evaluation_sample_from_lake,
    load_feature_rows,
    read_model_card,
    train_or_keep,
)
from instarec_assets.partitions import HISTORY_POOL, landing_batches
from instarec_assets.resources import (
    ComputeResource,
    LakeResource,
    ModelTrainingResource,
    RetrainPolicyResource,
    lake_connection,
)

BEATS_BASELINES_CHECK = "beats_baselines"
# The XGBoost inputs: the curated features plus the GraphSAGE user x product similarity (hybrid).
MODEL_FEATURES = (*FEATURE_COLUMNS, SIMILARITY_FEATURE)


class XGBoostModelConfig(Config):
    """Run configuration of xgboost_model."""

    # Fit a model with and one without the GraphSAGE similarity first (on at most 10,000 users): the
    # served model keeps the feature only when it measurably raises the held-out F1. Off: no
    # measurement, and the feature is always in the model.
    compare_without_similarity: bool = True
    # Keep the similarity in the served model even when the comparison finds no measurable gain.
    always_keep_similarity: bool = False
    # Fit a new model whatever the retrain policy says (the decision records it).
    force_retrain: bool = False
    # Train on the extra, earlier targets of short histories too (training_set's `train_earlier`
    # rows, features/targets.py); off: each user's last order alone, as before.
    earlier_targets: bool = True


def kept_model_features(card: dict) -> tuple[str, ...]:
    """The features a kept model scores with: its card's (the similarity may have been left out), or
    every model feature when the card names one this code no longer computes (then it is refitted)."""
    features = tuple(card.get("features", ()))
    return features if features and set(features) <= set(MODEL_FEATURES) else MODEL_FEATURES


def beats_baselines_result(check_name: str, baskets: BasketEvaluation) -> AssetCheckResult:
    """The xgboost_model asset's blocking check: fails (ERROR) unless the validation mean F1 beats
    both baselines; the description names each baseline that was not beaten."""
    verdict = compare_with_baselines(baskets)
    return AssetCheckResult(
        check_name=check_name,
        passed=verdict.passed,
        severity=AssetCheckSeverity.ERROR,
        description=verdict.description,
        metadata={
            "model_f1": baskets.model_f1,
            "last_order_f1": baskets.last_order_f1,
            "frequency_f1": baskets.frequency_f1,
            "frequency_min_orders": baskets.frequency_min_orders,
            "not_beaten": ", ".join(verdict.not_beaten) or "none",
        },
    )


@asset(
    name="xgboost_model",
    group_name="models",
    partitions_def=landing_batches,
    pool=HISTORY_POOL,
    io_manager_key="model_io_manager",
    kinds={"xgboost", "parquet"},
    description=(
        "XGBoost reorder classifier on the curated features, plus the GraphSAGE similarity when it "
        "measurably raises the held-out F1 (JSON model + model card with the F1 with and without it "
        "and the decision), early-stopped on held-out users."
    ),
    check_specs=[
        AssetCheckSpec(
            BEATS_BASELINES_CHECK,
            asset="xgboost_model",
            blocking=True,
            description="Validation mean per-order F1 beats repeat-last-order and bought-in->=r-orders.",
        )
    ],
)
def xgboost_model(
    context: AssetExecutionContext,
    config: XGBoostModelConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
    training: ModelTrainingResource,
    compute: ComputeResource,
    retrain_policy: RetrainPolicyResource,
    training_set: str,
    user_embeddings: str,
    product_embeddings: str,
) -> Iterator:
    """Fit on this batch's training set, or keep the latest earlier model (the retrain policy) and
    evaluate it on a seeded sample of this batch's users; either way the same metrics, plots and
    blocking check. A kept model reads only its sample's rows (the drift is measured on them); the
    whole training set is read only when the decision is to fit."""
    previous = previous_model(context, lake, "xgboost_model", MODEL_CARD_FILE)
    with lake_connection(duckdb, lake) as conn:
        similarity = SimilarityLookup.from_lake(conn, user_embeddings, product_embeddings)
        load = partial(
            load_feature_rows,
            conn,
            training_set,
            with_labels=True,
            computed={SIMILARITY_FEATURE: similarity.for_rows},
        )

        sample = None
        features = MODEL_FEATURES
        if previous is not None and not config.force_retrain:
            earlier_card = read_model_card(previous[1])
            sample = kept_evaluation_sample_from_lake(conn, training_set, earlier_card)
            features = kept_model_features(earlier_card)
        data = load(feature_names=features, users=None if sample is None else sample.users)
        if not config.earlier_targets:
            data = data.without_earlier_targets()
        decision, previous_card = decide_reorder_model(
            data,
            previous[1] if previous else None,
            retrain_policy.policy,
            context.partition_key,
            batches_since(context),
            force=config.force_retrain,
            sample=sample,
        )
        if decision.retrain and sample is not None:
            del data
            # A fit measures the similarity afresh, whether or not the earlier model used it.
            data, sample = load(feature_names=MODEL_FEATURES), None
            if not config.earlier_targets:
                data = data.without_earlier_targets()
        del similarity, load
    context.log.info(f"retrain: {decision.retrain} ({decision.reason})")
    context.log.info(
        f"{'training' if decision.retrain else 'evaluating the kept model'} on {data.rows:,} rows x "
        f"{len(data.feature_names)} features ({training.backend if decision.retrain else 'no fit'})"
    )
    report = train_or_keep(
        data,
        lake.staging_dir(context.run_id, "xgboost_model"),
        context.partition_key,
        decision,
        previous=previous[1] if previous else None,
        previous_card=previous_card,
        trainer=training.trainer() if decision.retrain else None,
        ablate=SIMILARITY_FEATURE if config.compare_without_similarity else None,
        threads=compute.threads,
        sample=sample,
        keep_ablated=config.always_keep_similarity,
    )
    metrics = report.metrics
    ablation = report.card.get("ablation")
    baskets = report.baskets
    yield Output(
        StagedArtifacts(report.model_dir, commit_file=MODEL_CARD_FILE),
        metadata={
            "model_version": MetadataValue.text(report.card["model_version"]),
            **decision_metadata(decision, "drift_psi_max", previous[0] if previous else None),
            "auc": MetadataValue.float(metrics.auc),
            "log_loss": MetadataValue.float(metrics.log_loss),
            "threshold": MetadataValue.float(metrics.threshold),
            "precision": MetadataValue.float(metrics.precision),
            "recall": MetadataValue.float(metrics.recall),
            "f1": MetadataValue.float(metrics.f1),
            "accuracy": MetadataValue.float(metrics.accuracy),
            "best_iteration": MetadataValue.int(report.card["best_iteration"]),
            "evaluated_users": MetadataValue.int(report.card["data_split"]["n_validation_users"]),
            **(
                {
                    "earlier_target_rows": MetadataValue.int(targets["earlier_rows"]),
                    "earlier_target_orders": MetadataValue.int(targets["earlier_orders"]),
                }
                if (targets := report.card.get("training_targets"))
                else {}
            ),
            "evaluation_users": MetadataValue.text(report.card["evaluation"]["users"]),
            "mean_f1_model": MetadataValue.float(baskets.model_f1),
            "mean_f1_last_order": MetadataValue.float(baskets.last_order_f1),
            "mean_f1_frequency": MetadataValue.float(baskets.frequency_f1),
            "basket_f1": MetadataValue.md(table_markdown(baskets.as_table())),
            "ranking": MetadataValue.md(table_markdown(pd.DataFrame(report.card["evaluation"]["ranking"]))),
            **(
                {
                    "mean_f1_without_similarity": MetadataValue.float(ablation["validation_mean_f1_without"]),
                    "auc_without_similarity": MetadataValue.float(ablation["validation_auc_without"]),
                    "similarity_in_model": MetadataValue.bool(SIMILARITY_FEATURE in report.card["features"]),
                    "similarity_decision": MetadataValue.text(
                        ablation.get("decision", "kept: measured before the rule that can leave it out")
                    ),
                }
                if ablation
                else {}
            ),
            "classification_report": MetadataValue.md(f"```\n{report.classification_report}\n```"),
            "threshold_analysis": MetadataValue.md(table_markdown(report.thresholds)),
            "feature_importance": MetadataValue.md(table_markdown(report.importance.head(25))),
            **{
                f"plot_{name}": MetadataValue.md(png_markdown(path, name))
                for name, path in report.plots.items()
            },
            "model_card": MetadataValue.json(report.card),
        },
    )
    yield beats_baselines_result(BEATS_BASELINES_CHECK, baskets)
    del data, report
    release_freed_memory()
