"""Where the reorder model trains and scores: this process, or SageMaker (training job, batch transform).

Both hold out the same users (`split_users`), so the metrics and baskets the asset records mean the
same thing whichever backend fitted the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xgboost as xgb

from instarec_assets.backends.sagemaker import SageMakerSettings, SageMakerXGBoost
from instarec_assets.ml.reorder_model import FeatureRows, InProcessTrainer
from instarec_assets.ml.training import (
    ReorderModelParams,
    TrainedModel,
    predict,
    split_users,
    training_data_fingerprint,
)


def _labelled_table(data: FeatureRows, rows: np.ndarray) -> pa.Table:
    columns = {"label": pa.array(data.labels[rows].astype(np.float32))}
    for position, name in enumerate(data.feature_names):
        columns[name] = pa.array(data.features[rows, position])
    return pa.table(columns)


# Left to the container: nthread (it uses every vCPU of its instance). `hist` trees are bit-identical
# for a given thread count, so a SageMaker model is reproducible on the same instance type only.
NOT_SENT_TO_SAGEMAKER = ("nthread",)


def sagemaker_hyperparameters(params: ReorderModelParams, seed: int) -> dict[str, str]:
    """The in-process booster parameters as the SageMaker XGBoost container takes them, so both
    backends fit the same model: every name in `booster_params` is one the container accepts
    (`lambda`, `gamma`, `max_bin`, `tree_method`, ...); `eval_metric` is a comma-separated list whose
    last metric (logloss) drives early stopping, as in `xgboost.train`."""
    booster_params = params.booster_params(seed)
    sent: dict[str, object] = {
        name: value for name, value in booster_params.items() if name not in NOT_SENT_TO_SAGEMAKER
    }
    sent["eval_metric"] = ",".join(booster_params["eval_metric"])
    sent["num_round"] = params.num_boost_round
    sent["early_stopping_rounds"] = params.early_stopping_rounds
    return {name: str(value) for name, value in sent.items()}


class SageMakerTrainer:
    """Fits with the SageMaker XGBoost container on the curated bucket, as the seed system did.

    The container (v3.0-5) early-stops with `EarlyStopping(save_best=True)`: its model holds the
    rounds up to the best one and the `best_iteration` / `best_score` attributes, which are read
    here (the booster is cut there should an artifact hold more rounds, as the in-process trainer
    cuts its own), so the card, the validation metrics, model.json and batch transform all describe
    one model. `card_extra` replaces the card's `parameters` with exactly the hyperparameters the
    job was sent and says where `best_iteration` came from.
    """

    def __init__(self, client: SageMakerXGBoost):
        self.client = client
        self.card_extra: dict[str, Any] = {}

    def train(self, data: FeatureRows, params: ReorderModelParams, seed: int, workdir: Path) -> TrainedModel:
        validation_fraction = 0.1
        train_mask, validation_mask = split_users(data.user_ids, validation_fraction, seed, data.validates)
        train_rows, validation_rows = np.flatnonzero(train_mask), np.flatnonzero(validation_mask)
        result = self.client.run_training_job(
            train=_labelled_table(data, train_rows),
            validation=_labelled_table(data, validation_rows),
            hyperparameters=sagemaker_hyperparameters(params, seed),
            workdir=workdir / "sagemaker",
        )
        trained = result.load_booster()
        rounds = int(trained.num_boosted_rounds())
        recorded = trained.attr("best_iteration")
        if recorded is not None:
            best_iteration = int(recorded)
            best_score = float(trained.attr("best_score") or "nan")
            source = "early stopping: the best_iteration attribute of the container's model"
            booster = trained[: best_iteration + 1]
            booster.set_attr(best_iteration=str(best_iteration), best_score=repr(best_score))
        else:
            best_iteration = rounds - 1
            best_score = float(result.metrics.get("validation:logloss", float("nan")))
            source = (
                "last round: the container's model records no best_iteration (early stopping did not run)"
            )
            booster = trained
        booster.feature_names = list(data.feature_names)
        data_sha256 = training_data_fingerprint(data.features, data.labels, data.user_ids, data.feature_names)
        self.card_extra = {
            "parameters": dict(result.hyperparameters),
            "best_iteration_source": source,
            "n_rounds_trained": rounds,
            "sagemaker_training_job": result.job_name,
            "sagemaker_model_artifact": result.model_artifact_uri,
            "reproducibility": {
                "seed": seed,
                "nthread": "the SageMaker container's: every vCPU of the training instance",
                "training_data_sha256": data_sha256,
                "training_rows": data.rows,
                "bit_identical": "model.json for the same rows, seed, instance type and container "
                "version; not this card (created_at, job names)",
            },
        }
        return TrainedModel(
            booster=booster,
            params=params,
            feature_names=data.feature_names,
            best_iteration=best_iteration,
            best_score=best_score,
            validation_index=validation_rows,
            validation_user_ids=np.unique(data.user_ids[validation_rows]),
            n_train_rows=int(train_rows.size),
            n_train_users=int(np.unique(data.user_ids[train_rows]).size),
            seed=seed,
            validation_fraction=validation_fraction,
            data_sha256=data_sha256,
        )


def score_in_process(booster: xgb.Booster, features: np.ndarray, threads: int = 0) -> np.ndarray:
    """In-process scoring on `threads` threads (0 = the usable CPUs)."""
    return predict(booster, features, threads=threads)


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
