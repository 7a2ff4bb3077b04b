"""Where the reorder model trains and scores: this process, or SageMaker (training job, batch transform).

Both hold out the same users (`split_users`), so the metrics and baskets the asset records mean the
same thing whichever backend fitted the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import xgboost as xgb

from instarec_assets.backends.sagemaker import SageMakerSettings, SageMakerXGBoost
from instarec_assets.ml.reorder_model import FeatureRows, InProcessTrainer
from instarec_assets.ml.training import ReorderModelParams, TrainedModel, predict, split_users


def _labelled_table(data: FeatureRows, rows: np.ndarray) -> pa.Table:
    columns = {"label": pa.array(data.labels[rows].astype(np.float32))}
    for position, name in enumerate(data.feature_names):
        columns[name] = pa.array(data.features[rows, position])
    return pa.table(columns)


class SageMakerTrainer:
    """Fits with the SageMaker XGBoost container on the curated bucket, as the seed system did."""

    def __init__(self, client: SageMakerXGBoost):
        self.client = client
        self.card_extra: dict[str, str] = {}

    def train(self, data: FeatureRows, params: ReorderModelParams, seed: int, workdir: Path) -> TrainedModel:
        validation_fraction = 0.1
        train_mask, validation_mask = split_users(data.user_ids, validation_fraction, seed)
        train_rows, validation_rows = np.flatnonzero(train_mask), np.flatnonzero(validation_mask)
        booster_params = params.booster_params(seed)
        hyperparameters = {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "eta": booster_params["eta"],
            "max_depth": booster_params["max_depth"],
            "min_child_weight": booster_params["min_child_weight"],
            "subsample": booster_params["subsample"],
            "colsample_bytree": booster_params["colsample_bytree"],
            "tree_method": "hist",
            "num_round": params.num_boost_round,
            "early_stopping_rounds": params.early_stopping_rounds,
            "seed": seed,
        }
        result = self.client.run_training_job(
            train=_labelled_table(data, train_rows),
            validation=_labelled_table(data, validation_rows),
            hyperparameters=hyperparameters,
            workdir=workdir / "sagemaker",
        )
        self.card_extra = {
            "sagemaker_training_job": result.job_name,
            "sagemaker_model_artifact": result.model_artifact_uri,
        }
        booster = result.load_booster()
        booster.feature_names = list(data.feature_names)
        return TrainedModel(
            booster=booster,
            params=params,
            feature_names=data.feature_names,
            best_iteration=int(booster.num_boosted_rounds()) - 1,
            best_score=float(result.metrics.get("validation:logloss", float("nan"))),
            validation_index=validation_rows,
            validation_user_ids=np.unique(data.user_ids[validation_rows]),
            n_train_rows=int(train_rows.size),
            n_train_users=int(np.unique(data.user_ids[train_rows]).size),
            seed=seed,
            validation_fraction=validation_fraction,
        )


def score_in_process(booster: xgb.Booster, features: np.ndarray) -> np.ndarray:
    return predict(booster, features)


BACKENDS = ("local", "sagemaker")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"INSTAREC_TRAINING_BACKEND must be 'local' or 'sagemaker', not {backend!r}")
    return backend


def sagemaker_client() -> SageMakerXGBoost:
    """Settings from the environment the orchestration stack sets (role, curated bucket, VPC, KMS)."""
    return SageMakerXGBoost(SageMakerSettings.from_env())


def build_trainer(
    backend: str, client: SageMakerXGBoost | None = None
) -> InProcessTrainer | SageMakerTrainer:
    """`local` trains in this process; `sagemaker` uses `client` (default: `sagemaker_client()`)."""
    if check_backend(backend) == "local":
        return InProcessTrainer()
    return SageMakerTrainer(client or sagemaker_client())
