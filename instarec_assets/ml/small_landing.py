"""The small-landing regime: how the reorder model trains when only a few hundred users land.

With the usual 10% held-out split, a landing of a few hundred users leaves a few dozen validation
users: early stopping on their log loss, the F1 threshold and the P(None) calibration chosen on them
are then noise. At or below `SmallDataPolicy.max_users` users, training therefore

- chooses the number of boosting rounds by grouped k-fold cross-validation over the *training*
  users (`xgboost.cv` with folds that never split a user, so a fold's score is on people its
  model never saw, as the held-out split is) and then fits once on every training user with that
  many rounds; the validation users stay held out for the report;
- regularises by the data it has, from one setting, `min_users_per_leaf` (below);
- reports precision, recall and F1 at a documented default threshold, and keeps the P(None)
  independence, when the validation users are too few to choose either (`min_users_per_half`).

Why users, not rows: a shopper's candidate rows share the user features and one target order, so
they are strongly correlated; the evidence behind a split is closer to the number of shoppers it
covers than to its row count. `min_users_per_leaf` sets how many average shoppers' worth of rows a
leaf must rest on, and the three capacity settings follow from it (`regularised_params`).

Nothing here is fitted to the synthetic generator: every default is a prior stated with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import xgboost as xgb

if TYPE_CHECKING:
    from instarec_assets.ml.training import ReorderModelParams

SMALL_LANDING = "small landing: grouped cross-validation"
HOLDOUT = "held-out early stopping"

# 10,000 users: with 10% held out, 1,000 validation users, 500 per half, the figure below. Above it
# the held-out split is large enough to early-stop on and to choose the threshold and P(None) on.
DEFAULT_MAX_USERS = 10_000
DEFAULT_FOLDS = 5
# 10 shoppers per leaf: a leaf weight then averages at least ten people's behaviour, not one
# shopper's 60-odd correlated rows. A prior, not a tuned value.
DEFAULT_MIN_USERS_PER_LEAF = 10.0
# 500 users (one target order each) per half of the validation users: the figure the P(None)
# calibration already requires (ml/none_probability.MIN_ORDERS_PER_HALF). Near its optimum the
# F1-against-threshold curve is flat, so its arg-max on fewer users wanders with the sample.
DEFAULT_MIN_USERS_PER_HALF = 500
# 0.2: for a calibrated classifier the F1-optimal threshold is half the attainable F1 (Lipton, Elkan
# and Naryanaswamy 2014, "Optimal thresholding of classifiers to maximize F1 measure"); reorder
# models on the real Instacart data reach a row-level F1 near 0.4, and the public Kaggle kernels
# settled on global thresholds of 0.2-0.22. Used only when too few validation users to choose one.
DEFAULT_THRESHOLD = 0.2


@dataclass(frozen=True)
class SmallDataPolicy:
    """When the small-landing regime applies and its settings (see the module docstring)."""

    max_users: int = DEFAULT_MAX_USERS  # 0 = never (always held-out early stopping)
    folds: int = DEFAULT_FOLDS
    min_users_per_leaf: float = DEFAULT_MIN_USERS_PER_LEAF
    min_users_per_half: int = DEFAULT_MIN_USERS_PER_HALF
    default_threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.max_users < 0:
            raise ValueError(f"small-landing max_users must be >= 0, got {self.max_users}")
        if self.folds < 2:
            raise ValueError(f"cross-validation needs at least 2 folds, got {self.folds}")
        if not self.min_users_per_leaf > 0:
            raise ValueError(f"min_users_per_leaf must be positive, got {self.min_users_per_leaf}")
        if self.min_users_per_half < 1:
            raise ValueError(f"min_users_per_half must be >= 1, got {self.min_users_per_half}")
        if not 0.0 < self.default_threshold < 1.0:
            raise ValueError(f"default_threshold must be in (0, 1), got {self.default_threshold}")

    def applies(self, n_users: int) -> bool:
        """True when `n_users` (every user of the training set) is at most `max_users`."""
        return 0 < n_users <= self.max_users

    def too_few_to_choose(self, n_validation_users: int) -> bool:
        """True when half the validation users is fewer than `min_users_per_half`."""
        return n_validation_users // 2 < self.min_users_per_half

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_users": self.max_users,
            "folds": self.folds,
            "min_users_per_leaf": self.min_users_per_leaf,
            "min_users_per_half": self.min_users_per_half,
            "default_threshold": self.default_threshold,
        }


def user_folds(user_ids: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`folds` (train rows, test rows) pairs over positions in `user_ids`: users are dealt to folds
    in a seeded random order, round robin, so every user's rows sit in exactly one test fold and
    fold sizes differ by at most one user."""
    ids = np.asarray(user_ids)
    users, inverse = np.unique(ids, return_inverse=True)
    if users.size < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} users, got {users.size}")
    fold_of_user = np.empty(users.size, dtype=np.int64)
    fold_of_user[np.random.default_rng(seed).permutation(users.size)] = np.arange(users.size) % folds
    fold_of_row = fold_of_user[inverse.reshape(-1)]
    return [(np.flatnonzero(fold_of_row != k), np.flatnonzero(fold_of_row == k)) for k in range(folds)]


@dataclass(frozen=True)
class Capacity:
    """The capacity settings `regularised_params` chose and the figures they came from."""

    n_users: int
    rows_per_user: float
    positive_rate: float
    leaf_hessian: float
    min_child_weight: float
    reg_lambda: float
    max_depth: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_users": self.n_users,
            "rows_per_user": round(self.rows_per_user, 3),
            "positive_rate": round(self.positive_rate, 5),
            "leaf_hessian": round(self.leaf_hessian, 4),
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "max_depth": self.max_depth,
            "rule": (
                "leaf_hessian = min_users_per_leaf x rows per user x p(1 - p); min_child_weight and "
                "lambda at least leaf_hessian; max_depth at most log2(users / min_users_per_leaf)"
            ),
        }


def regularised_params(
    params: ReorderModelParams, labels: np.ndarray, user_ids: np.ndarray, policy: SmallDataPolicy
) -> tuple[ReorderModelParams, Capacity]:
    """`params` with capacity limited by the training users it will see, from `min_users_per_leaf`:

    - min_child_weight >= the hessian of min_users_per_leaf average users' rows (a logistic row's
      hessian is p(1 - p), p the positive rate), so no leaf rests on fewer shoppers than that;
    - lambda >= the same figure, so a leaf holding only that minimum has its weight halved towards
      zero and larger leaves are shrunk less (leaf weight = G / (H + lambda));
    - max_depth <= floor(log2(users / min_users_per_leaf)), at least 1: a tree cannot have more
      leaves than the users could fill at that minimum.

    Each only ever tightens the given settings."""
    y = np.asarray(labels, dtype=np.float64)
    n_users = int(np.unique(np.asarray(user_ids)).size)
    rows_per_user = y.size / max(n_users, 1)
    rate = float(y.mean()) if y.size else 0.0
    leaf_hessian = policy.min_users_per_leaf * rows_per_user * rate * (1.0 - rate)
    depth_cap = max(1, math.floor(math.log2(max(n_users / policy.min_users_per_leaf, 1.0))))
    tightened = replace(
        params,
        min_child_weight=max(params.min_child_weight, round(leaf_hessian, 4)),
        reg_lambda=max(params.reg_lambda, round(leaf_hessian, 4)),
        max_depth=min(params.max_depth, depth_cap),
    )
    return tightened, Capacity(
        n_users=n_users,
        rows_per_user=rows_per_user,
        positive_rate=rate,
        leaf_hessian=leaf_hessian,
        min_child_weight=tightened.min_child_weight,
        reg_lambda=tightened.reg_lambda,
        max_depth=tightened.max_depth,
    )


@dataclass(frozen=True)
class CrossValidation:
    """`xgboost.cv` over user folds: the mean and std of the test folds' log loss per round (cut at
    early stopping), and the rounds chosen, the arg-min of the mean plus one."""

    folds: int
    users: int
    rows: int
    test_logloss_mean: tuple[float, ...]
    test_logloss_std: tuple[float, ...]

    @property
    def rounds(self) -> int:
        return int(np.argmin(self.test_logloss_mean)) + 1

    @property
    def best_logloss(self) -> float:
        return float(self.test_logloss_mean[self.rounds - 1])

    def as_dict(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "users": self.users,
            "rows": self.rows,
            "rounds_chosen": self.rounds,
            "cv_logloss_mean": self.best_logloss,
            "cv_logloss_std": float(self.test_logloss_std[self.rounds - 1]),
        }


def cross_validate_rounds(
    booster_params: dict[str, Any],
    dtrain: xgb.DMatrix,
    user_ids: np.ndarray,
    num_boost_round: int,
    early_stopping_rounds: int,
    folds: int,
    seed: int,
) -> CrossValidation:
    """Grouped k-fold `xgboost.cv` on `dtrain` (a plain DMatrix: cv slices it), `user_ids` aligned
    with its rows; early stopping watches the mean test-fold log loss. Deterministic for the seed."""
    result = xgb.cv(
        booster_params,
        dtrain,
        num_boost_round=num_boost_round,
        folds=user_folds(user_ids, folds, seed),
        early_stopping_rounds=early_stopping_rounds,
        seed=seed,
        shuffle=False,
        as_pandas=True,
        verbose_eval=False,
    )
    return CrossValidation(
        folds=folds,
        users=int(np.unique(np.asarray(user_ids)).size),
        rows=int(dtrain.num_row()),
        test_logloss_mean=tuple(float(v) for v in result["test-logloss-mean"]),
        test_logloss_std=tuple(float(v) for v in result["test-logloss-std"]),
    )
