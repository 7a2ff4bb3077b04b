"""Training, scoring and persisting the XGBoost reorder model (Kaggle Instacart framing).

One row per (user, candidate product, target order); the label says whether the product is in the
target order. Validation holds out whole users, so early stopping and validation metrics measure
generalisation to people the model has never seen, not to other rows of the same basket.

Reproducible: the same rows in the same order, the same seed, thread count and XGBoost version give
a bit-identical model.json and bit-identical predictions. Every random choice (held-out users, XGBoost's
row and column subsampling) comes from the seed; `hist` trees are deterministic for a given `nthread` (not promised across thread counts, so
the count is recorded); the row order is the caller's (load_feature_rows sorts by the row key).
The model card records the seed, the thread count and a sha256 of the training rows, and also when
it was written (`created_at`): the card is not bit-identical between runs, model.json is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from instarec_assets.compute import thread_count

LOGGER = logging.getLogger(__name__)
PREDICT_CHUNK_ROWS = 1_000_000
MODEL_CARD_KEYS = ("features", "parameters", "metrics", "data_partition", "code_version")


@dataclass(frozen=True)
class ReorderModelParams:
    """Booster settings that suit ~8M rows x ~40 dense features with ~10% positives."""

    # 0.2, not 0.1: half the rounds for -0.0005 validation F1 at full size (bench/RESULTS.md), which
    # pays for the second fit the GraphSAGE ablation needs inside the pipeline's 15-minute budget.
    eta: float = 0.2
    max_depth: int = 6
    min_child_weight: float = 10.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    gamma: float = 0.0
    max_bin: int = 256
    num_boost_round: int = 500
    early_stopping_rounds: int = 25
    nthread: int = 0  # 0 = every CPU this process may use (instarec_assets.compute.usable_cpus)

    def booster_params(self, seed: int) -> dict[str, Any]:
        """Parameters for `xgboost.train`. Only validation logloss is evaluated each round (early
        stopping watches it); AUC is computed once, on the final model, by the caller: an exact AUC
        per round sorts every validation row each round and adds nothing the trees need."""
        return {
            "objective": "binary:logistic",
            "tree_method": "hist",
            "eval_metric": ["logloss"],
            "eta": self.eta,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "gamma": self.gamma,
            "max_bin": self.max_bin,
            "nthread": thread_count(self.nthread or 0),
            "seed": seed,
        }


@dataclass
class TrainedModel:
    """A fitted booster (cut to its best iteration) and what the caller needs to evaluate it.

    `validation_index` are row positions in the training arrays, `validation_user_ids` the held-out
    users (sorted); `evals_result` is {"validation": {"logloss": [per round]}}: the training rows are not
    scored each round (that spent time predicting them, not growing trees)."""

    booster: xgb.Booster
    params: ReorderModelParams
    feature_names: tuple[str, ...]
    best_iteration: int
    best_score: float
    validation_index: np.ndarray
    validation_user_ids: np.ndarray
    n_train_rows: int
    n_train_users: int
    evals_result: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seed: int = 0
    validation_fraction: float = 0.1
    data_sha256: str = ""  # training_data_fingerprint of the rows the model was fitted on

    @property
    def n_rounds_trained(self) -> int:
        return len(self.evals_result.get("validation", {}).get("logloss", []))


def split_users(
    user_ids: np.ndarray, validation_fraction: float, seed: int, validates: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row masks (train, validation) holding out a random `validation_fraction` of users whole.

    `validates` (a row mask; default every row) says which rows may validate: the held-out users are
    drawn among the users with such rows, so adding rows that only train (extra, earlier targets)
    never changes who is held out; a held-out user's other rows are in neither mask, so no held-out
    user trains the model."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    user_ids = np.asarray(user_ids)
    validates = np.ones(user_ids.shape[0], dtype=bool) if validates is None else np.asarray(validates, bool)
    users = np.unique(user_ids[validates])
    if users.size < 2:
        raise ValueError(f"need at least 2 users to hold some out for validation, got {users.size}")
    n_validation = min(users.size - 1, max(1, round(validation_fraction * users.size)))
    held_out_users = users[np.random.default_rng(seed).choice(users.size, size=n_validation, replace=False)]
    held_out_rows = np.isin(user_ids, held_out_users)
    return ~held_out_rows, held_out_rows & validates


# A kept model (the retrain policy) is evaluated on at most this many of the batch's validation users,
# drawn by the split's seed (the ablation's sample size): its metrics and baseline check then cost in
# proportion to the sample, not to the history. A retrained model is evaluated on every one.
KEPT_EVALUATION_MAX_USERS = 10_000


def sample_users(users: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    """At most `max_users` of the distinct `users`, drawn by `seed`, sorted (all of them when fewer)."""
    users = np.unique(np.asarray(users))
    if users.size <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


class _RowChunks(xgb.DataIter):
    """Feeds selected rows to a QuantileDMatrix chunk by chunk, so the full feature matrix is never
    copied: only one chunk of fancy-indexed rows exists at a time."""

    def __init__(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        rows: np.ndarray,
        feature_names: Sequence[str],
        chunk_rows: int,
    ) -> None:
        self._features, self._labels, self._rows = features, labels, rows
        self._feature_names = list(feature_names)
        self._chunk_rows = chunk_rows
        self._position = 0
        super().__init__(release_data=True)

    def next(self, input_data) -> bool:
        if self._position >= self._rows.size:
            return False
        rows = self._rows[self._position : self._position + self._chunk_rows]
        input_data(data=self._features[rows], label=self._labels[rows], feature_names=self._feature_names)
        self._position += self._chunk_rows
        return True

    def reset(self) -> None:
        self._position = 0


def _quantile_matrix(
    features: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    feature_names: Sequence[str],
    params: ReorderModelParams,
    ref: xgb.QuantileDMatrix | None = None,
) -> xgb.QuantileDMatrix:
    return xgb.QuantileDMatrix(
        _RowChunks(features, labels, rows, feature_names, PREDICT_CHUNK_ROWS),
        max_bin=params.max_bin,
        nthread=thread_count(params.nthread or 0),
        ref=ref,
    )


def training_data_fingerprint(
    features: np.ndarray, labels: np.ndarray, user_ids: np.ndarray, feature_names: Sequence[str]
) -> str:
    """sha256 over the training rows in their order: feature names, shape, the float32 feature matrix,
    the labels (float32) and the user ids (int64, they decide the held-out users). Two fits with the
    same fingerprint, seed and thread count give the same model.json. Hashes the arrays' buffers in
    place (no copy when `features` is already C-contiguous float32; a strided view, such as the
    matrix without its last column, is hashed a block of rows at a time, the same bytes in order)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(feature_names), list(np.shape(features))]).encode())
    for start in range(0, max(len(features), 1), PREDICT_CHUNK_ROWS):
        block = np.ascontiguousarray(features[start : start + PREDICT_CHUNK_ROWS], dtype=np.float32)
        digest.update(memoryview(block).cast("B"))
    for array in (
        np.ascontiguousarray(labels, dtype=np.float32),
        np.ascontiguousarray(user_ids, dtype=np.int64),
    ):
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


class RoundLog(xgb.callback.TrainingCallback):
    """Logs the boosting round and the validation score about 20 times per fit (progress in the UI
    and in `instarec materialize`); it reads the scores XGBoost computes anyway."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds
        self.every = max(1, rounds // 20)

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        if (epoch + 1) % self.every == 0:
            scores = ", ".join(
                f"{data} {metric} {values[-1]:.4f}"
                for data, metrics in evals_log.items()
                for metric, values in metrics.items()
            )
            LOGGER.info("boosting round %d/%d: %s", epoch + 1, self.rounds, scores)
        return False


def train_reorder_model(
    features: np.ndarray,
    labels: np.ndarray,
    user_ids: np.ndarray,
    feature_names: Sequence[str],
    params: ReorderModelParams | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    validates: np.ndarray | None = None,
) -> TrainedModel:
    """Fit binary:logistic with hist trees, early-stopped on the held-out users' logloss
    (`validates`: the rows that may validate, see split_users).

    `params.nthread` 0 is resolved to the usable CPUs here, so the model records the count it used."""
    params = params or ReorderModelParams()
    params = replace(params, nthread=thread_count(params.nthread or 0))
    labels = np.asarray(labels, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != len(feature_names):
        raise ValueError(f"features must be rows x {len(feature_names)} (one column per feature name)")
    if not (features.shape[0] == labels.shape[0] == len(user_ids)):
        raise ValueError("features, labels and user_ids must have the same number of rows")
    if np.isnan(labels).any() or not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (inference rows with a NULL label cannot be trained on)")
    train_mask, validation_mask = split_users(user_ids, validation_fraction, seed, validates)
    train_rows = np.flatnonzero(train_mask)
    validation_rows = np.flatnonzero(validation_mask)
    dtrain = _quantile_matrix(features, labels, train_rows, feature_names, params)
    dvalid = _quantile_matrix(features, labels, validation_rows, feature_names, params, ref=dtrain)
    history: dict = {}
    booster = xgb.train(
        params.booster_params(seed),
        dtrain,
        num_boost_round=params.num_boost_round,
        evals=[(dvalid, "validation")],
        early_stopping_rounds=params.early_stopping_rounds,
        evals_result=history,
        verbose_eval=False,
        callbacks=[RoundLog(params.num_boost_round)],
    )
    best_iteration = int(booster.best_iteration)
    best_score = float(booster.best_score)
    best = booster[: best_iteration + 1]
    best.set_attr(best_iteration=str(best_iteration), best_score=repr(best_score))
    train_users = np.unique(np.asarray(user_ids)[train_rows])
    return TrainedModel(
        booster=best,
        params=params,
        feature_names=tuple(feature_names),
        best_iteration=best_iteration,
        best_score=best_score,
        validation_index=validation_rows,
        validation_user_ids=np.unique(np.asarray(user_ids)[validation_rows]),
        n_train_rows=int(train_rows.size),
        n_train_users=int(train_users.size),
        evals_result={
            name: {m: [float(v) for v in values] for m, values in metrics.items()}
            for name, metrics in history.items()
        },
        seed=seed,
        validation_fraction=validation_fraction,
        data_sha256=training_data_fingerprint(features, labels, user_ids, feature_names),
    )


def predict(
    booster: xgb.Booster, features: np.ndarray, chunk_rows: int = PREDICT_CHUNK_ROWS, threads: int = 0
) -> np.ndarray:
    """Reorder probabilities (float32), scored chunk by chunk so memory stays bounded, on `threads`
    threads (0 = the usable CPUs; a row's probability does not depend on it)."""
    booster.set_param({"nthread": thread_count(threads)})
    out = np.empty(features.shape[0], dtype=np.float32)
    for start in range(0, features.shape[0], chunk_rows):
        chunk = np.ascontiguousarray(features[start : start + chunk_rows], dtype=np.float32)
        out[start : start + chunk.shape[0]] = booster.inplace_predict(chunk, validate_features=False)
    return out


def save_model(booster: xgb.Booster, path: str | Path) -> Path:
    """XGBoost's own JSON format (portable across versions, unlike pickle)."""
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"model path must end in .json so XGBoost writes JSON: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


def load_model(path: str | Path, threads: int = 0) -> xgb.Booster:
    """A saved model, set to predict on `threads` threads (0 = the usable CPUs)."""
    booster = xgb.Booster(model_file=str(path))
    booster.set_param({"nthread": thread_count(threads)})
    return booster


def code_version() -> str:
    """The installed instarec version plus the git commit when run from a checkout,
    e.g. "0.1.0+g1a2b3c4d5e6f" (or "0.1.0" outside git, "unknown" if not installed)."""
    try:
        version = metadata.version("instarec")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return version
    commit = result.stdout.strip()
    return f"{version}+g{commit[:12]}" if commit else version


def build_model_card(
    model: TrainedModel,
    *,
    metrics: Mapping[str, Any],
    data_partition: str,
    code_version: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a reviewer needs to trust or reproduce the model, as a JSON-ready dict."""
    card: dict[str, Any] = {
        "model": "XGBoost binary:logistic reorder classifier (Instacart next-basket framing)",
        "features": list(model.feature_names),
        "parameters": {
            **model.params.booster_params(model.seed),
            "num_boost_round": model.params.num_boost_round,
            "early_stopping_rounds": model.params.early_stopping_rounds,
        },
        "best_iteration": model.best_iteration,
        "best_validation_logloss": model.best_score,
        "n_rounds_trained": model.n_rounds_trained,
        "metrics": dict(metrics),
        "data_partition": data_partition,
        "data_split": {
            "method": "hold out whole users",
            "validation_fraction": model.validation_fraction,
            "seed": model.seed,
            "n_train_rows": model.n_train_rows,
            "n_validation_rows": int(model.validation_index.size),
            "n_train_users": model.n_train_users,
            "n_validation_users": int(model.validation_user_ids.size),
        },
        "code_version": code_version,
        "xgboost_version": xgb.__version__,
        # What makes model.json bit-identical: the same training rows (this fingerprint), seed, thread
        # count and XGBoost version. The card itself is not: created_at is the time it was written.
        "reproducibility": {
            "seed": model.seed,
            "nthread": thread_count(model.params.nthread or 0),
            "training_data_sha256": model.data_sha256,
            "training_rows": model.n_train_rows + int(model.validation_index.size),
            "bit_identical": "model.json and predictions; not this card (created_at)",
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    card.update(extra or {})
    return card


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_model_card(path: str | Path, card: Mapping[str, Any]) -> Path:
    """Write the card as JSON; refuse a card missing any of MODEL_CARD_KEYS."""
    missing = [key for key in MODEL_CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"model card is missing {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
    return path
