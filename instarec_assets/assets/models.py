"""Models: the XGBoost reorder model, trained on the partition's training set and judged against baselines."""

from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    MetadataValue,
    Output,
    asset,
)
from dagster_duckdb import DuckDBResource

from instarec_assets.features import FEATURE_COLUMNS
from instarec_assets.io_managers import StagedArtifacts
from instarec_assets.ml.metrics import png_markdown, table_markdown
from instarec_assets.ml.reorder_model import MODEL_CARD_FILE, load_feature_rows, train_and_report
from instarec_assets.partitions import landing_date_partitions
from instarec_assets.resources import LakeResource, ModelTrainingResource, lake_connection

BEATS_BASELINES_CHECK = "beats_baselines"


def model_assets(storage_kind: str) -> list[AssetsDefinition]:
    @asset(
        name="xgboost_model",
        group_name="models",
        partitions_def=landing_date_partitions,
        io_manager_key="model_io_manager",
        kinds={"xgboost", storage_kind},
        description="XGBoost reorder classifier (JSON model + model card), early-stopped on held-out users.",
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
        lake: LakeResource,
        duckdb: DuckDBResource,
        training: ModelTrainingResource,
        training_set: str,
    ) -> Iterator:
        with lake_connection(duckdb, lake) as conn:
            data = load_feature_rows(conn, training_set, FEATURE_COLUMNS, with_labels=True)
        context.log.info(
            f"training on {data.rows:,} rows x {len(data.feature_names)} features ({training.backend})"
        )
        report = train_and_report(
            data,
            lake.staging_dir(context.run_id, "xgboost_model"),
            context.partition_key,
            trainer=training.trainer(),
        )
        metrics = report.metrics
        baskets = report.baskets
        yield Output(
            StagedArtifacts(report.model_dir, commit_file=MODEL_CARD_FILE),
            metadata={
                "model_version": MetadataValue.text(report.card["model_version"]),
                "auc": MetadataValue.float(metrics.auc),
                "log_loss": MetadataValue.float(metrics.log_loss),
                "threshold": MetadataValue.float(metrics.threshold),
                "precision": MetadataValue.float(metrics.precision),
                "recall": MetadataValue.float(metrics.recall),
                "f1": MetadataValue.float(metrics.f1),
                "accuracy": MetadataValue.float(metrics.accuracy),
                "best_iteration": MetadataValue.int(report.card["best_iteration"]),
                "mean_f1_model": MetadataValue.float(baskets.model_f1),
                "mean_f1_last_order": MetadataValue.float(baskets.last_order_f1),
                "mean_f1_frequency": MetadataValue.float(baskets.frequency_f1),
                "basket_f1": MetadataValue.md(table_markdown(baskets.as_table())),
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
        yield AssetCheckResult(
            check_name=BEATS_BASELINES_CHECK,
            passed=report.beats_baselines,
            severity=AssetCheckSeverity.ERROR,
            description=(
                f"model {baskets.model_f1:.4f} vs last order {baskets.last_order_f1:.4f} "
                f"and >= {baskets.frequency_min_orders} orders {baskets.frequency_f1:.4f}"
            ),
            metadata={
                "model_f1": baskets.model_f1,
                "last_order_f1": baskets.last_order_f1,
                "frequency_f1": baskets.frequency_f1,
            },
        )

    return [xgboost_model]
