"""The reorder model end to end: load a feature set, train, evaluate against baselines, write artifacts.

Dagster-free so the asset stays thin and the benchmark can run the same code. Training itself is
pluggable (`Trainer`): in-process XGBoost locally, or a SageMaker training job in aws mode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb
import numpy as np
import pandas as pd

from instarec_assets.ml.evaluation import BasketEvaluation, evaluate_baskets
from instarec_assets.ml.metrics import (
    ClassificationMetrics,
    classification_metrics,
    classification_report_text,
    feature_importance,
    plot_feature_importance,
    plot_learning_curve,
    plot_threshold_analysis,
    threshold_table,
)
from instarec_assets.ml.training import (
    ReorderModelParams,
    TrainedModel,
    build_model_card,
    code_version,
    predict,
    save_model,
    train_reorder_model,
    write_model_card,
)

MODEL_FILE = "model.json"
MODEL_CARD_FILE = "model_card.json"
# Columns the baselines read from the feature set itself: times bought, and bought in the last order.
HISTORY_COUNT_COLUMN = "up_orders"
LAST_ORDER_COLUMN = "up_in_last_1"


@dataclass(frozen=True)
class FeatureRows:
    """A feature set as arrays: the model matrix (float32) and the ids that say what each row is."""

    features: np.ndarray
    user_ids: np.ndarray
    product_ids: np.ndarray
    order_ids: np.ndarray
    eval_sets: np.ndarray
    labels: np.ndarray | None
    feature_names: tuple[str, ...]

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def load_feature_rows(
    conn: duckdb.DuckDBPyConnection, uri: str, feature_names: Sequence[str], with_labels: bool
) -> FeatureRows:
    """Read a staged or stored feature set; one float32 column at a time to keep one copy in memory."""
    columns = ", ".join(f'"{name}"' for name in feature_names)
    label = ", label" if with_labels else ""
    table = conn.sql(
        f"SELECT user_id, product_id, order_id, eval_set{label}, {columns} "
        "FROM read_parquet($uri, hive_partitioning = false)",
        params={"uri": uri},
    ).to_arrow_table()
    features = np.empty((table.num_rows, len(feature_names)), dtype=np.float32)
    for position, name in enumerate(feature_names):
        features[:, position] = (
            table.column(name).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        )
    return FeatureRows(
        features=features,
        user_ids=table.column("user_id").to_numpy(zero_copy_only=False),
        product_ids=table.column("product_id").to_numpy(zero_copy_only=False),
        order_ids=table.column("order_id").to_numpy(zero_copy_only=False),
        eval_sets=table.column("eval_set").to_numpy(zero_copy_only=False),
        labels=table.column("label").to_numpy(zero_copy_only=False).astype(np.int8) if with_labels else None,
        feature_names=tuple(feature_names),
    )


class Trainer(Protocol):
    """Where the model is fitted: must hold out users exactly as `train_reorder_model` does."""

    def train(
        self, data: FeatureRows, params: ReorderModelParams, seed: int, workdir: Path
    ) -> TrainedModel: ...


class InProcessTrainer:
    """XGBoost in this process (the local default)."""

    def train(self, data: FeatureRows, params: ReorderModelParams, seed: int, workdir: Path) -> TrainedModel:
        return train_reorder_model(
            data.features, data.labels, data.user_ids, data.feature_names, params, seed=seed
        )


@dataclass
class ReorderModelReport:
    """Everything the xgboost_model asset records: artifacts on disk and the numbers behind them."""

    model_dir: Path
    card: dict
    metrics: ClassificationMetrics
    baskets: BasketEvaluation
    classification_report: str
    thresholds: pd.DataFrame
    importance: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)

    @property
    def beats_baselines(self) -> bool:
        return self.baskets.model_f1 > max(self.baskets.last_order_f1, self.baskets.frequency_f1)


def _candidate_frame(
    data: FeatureRows, rows: np.ndarray, probabilities: np.ndarray | None = None
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": data.user_ids[rows],
            "order_id": data.order_ids[rows],
            "product_id": data.product_ids[rows],
            "label": data.labels[rows],
        }
    )
    if probabilities is not None:
        frame["probability"] = probabilities
    return frame


def _baseline_inputs(data: FeatureRows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """History counts and last-order products, read back from the candidate features themselves."""
    names = list(data.feature_names)
    counts = data.features[:, names.index(HISTORY_COUNT_COLUMN)]
    in_last = data.features[:, names.index(LAST_ORDER_COLUMN)] > 0
    history_counts = pd.DataFrame(
        {
            "user_id": data.user_ids,
            "product_id": data.product_ids,
            "n_orders_with_product": counts.astype(np.int32),
        }
    )
    last_order = pd.DataFrame({"user_id": data.user_ids[in_last], "product_id": data.product_ids[in_last]})
    return history_counts, last_order


def train_and_report(
    data: FeatureRows,
    workdir: Path,
    data_partition: str,
    trainer: Trainer | None = None,
    params: ReorderModelParams | None = None,
    seed: int = 0,
) -> ReorderModelReport:
    """Fit, score the held-out users, compare baskets with both baselines, write model + card + plots."""
    params = params or ReorderModelParams()
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = trainer or InProcessTrainer()
    model = trainer.train(data, params, seed, workdir)
    validation_rows = model.validation_index
    validation_probabilities = predict(model.booster, data.features[validation_rows])
    validation_labels = data.labels[validation_rows]
    metrics = classification_metrics(validation_labels, validation_probabilities)
    thresholds = threshold_table(validation_labels, validation_probabilities)
    importance = feature_importance(model.booster, data.feature_names)

    train_rows = np.setdiff1d(np.arange(data.rows), validation_rows, assume_unique=True)
    history_counts, last_order = _baseline_inputs(data)
    baskets = evaluate_baskets(
        _candidate_frame(data, validation_rows, validation_probabilities),
        _candidate_frame(data, train_rows),
        history_counts,
        last_order,
    )
    plots = {
        "threshold_analysis": plot_threshold_analysis(thresholds, workdir, best_threshold=metrics.threshold),
        "feature_importance": plot_feature_importance(importance, workdir),
    }
    if model.evals_result:
        plots["learning_curve"] = plot_learning_curve(
            model.evals_result, workdir, best_iteration=model.best_iteration
        )
    save_model(model.booster, workdir / MODEL_FILE)
    card = build_model_card(
        model,
        metrics={**metrics.as_dict(), "basket_f1": baskets.as_dict()},
        data_partition=data_partition,
        code_version=code_version(),
        extra={
            "model_version": f"xgboost-{data_partition}-{code_version()}",
            **getattr(trainer, "card_extra", {}),
        },
    )
    write_model_card(workdir / MODEL_CARD_FILE, card)
    return ReorderModelReport(
        model_dir=workdir,
        card=card,
        metrics=metrics,
        baskets=baskets,
        classification_report=classification_report_text(
            validation_labels, validation_probabilities, metrics.threshold
        ),
        thresholds=thresholds,
        importance=importance,
        plots=plots,
    )


def read_model_card(model_dir: str | Path) -> dict:
    return json.loads(Path(model_dir, MODEL_CARD_FILE).read_text())
