"""The small-landing regime: a few hundred generated users train with rounds chosen by grouped
cross-validation over users, reproducibly, no worse than a constant rate on held-out users, with the
threshold and P(None) falling back to their documented defaults; larger landings train as before."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pytest
import xgboost as xgb

from instarec_assets.features import FEATURE_COLUMNS, build_features
from instarec_assets.generate import generate_dataset
from instarec_assets.ml.reorder_model import (
    MODEL_FILE,
    FeatureRows,
    InProcessTrainer,
    load_feature_rows,
    train_and_report,
)
from instarec_assets.ml.small_landing import (
    DEFAULT_THRESHOLD,
    HOLDOUT,
    SMALL_LANDING,
    SmallDataPolicy,
    regularised_params,
    user_folds,
)
from instarec_assets.ml.training import ReorderModelParams, predict, train_reorder_model
from instarec_assets.resources import ModelTrainingResource
from instarec_assets.settings import Settings, SettingsError
from instarec_assets_tests.test_features_generated import clean_snapshot_from_landing

PARAMS = ReorderModelParams(nthread=1)
POLICY = SmallDataPolicy()


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> FeatureRows:
    """The training set of one generated landing of 300 users (those with a train order in it)."""
    root = tmp_path_factory.mktemp("small-landing")
    generate_dataset(root / "landing", users=300, seed=5, batches=1)
    snapshot = clean_snapshot_from_landing(root / "landing", root / "lake")
    with duckdb.connect() as conn:
        tables = build_features(conn, snapshot, root / "scratch")
        return load_feature_rows(conn, str(tables.training_set.path), FEATURE_COLUMNS, with_labels=True)


@pytest.fixture(scope="module")
def fitted(landing: FeatureRows):
    return train_reorder_model(
        landing.features, landing.labels, landing.user_ids, landing.feature_names, PARAMS, small_data=POLICY
    )


def test_a_small_landing_trains_in_the_cross_validated_regime(landing: FeatureRows, fitted) -> None:
    n_users = np.unique(landing.user_ids).size
    assert 100 < n_users <= 300
    regime = fitted.regime
    assert regime["name"] == SMALL_LANDING
    assert (regime["users"], regime["train_users"], regime["validation_users"]) == (
        n_users,
        fitted.n_train_users,
        fitted.validation_user_ids.size,
    )
    assert regime["validation_users"] == round(0.1 * n_users)
    assert f"{n_users} users, at most the small-landing limit of 10,000" in regime["reason"]
    cv = regime["cross_validation"]
    assert (cv["folds"], cv["users"], cv["rows"]) == (5, fitted.n_train_users, fitted.n_train_rows)
    assert regime["rounds_chosen"] == cv["rounds_chosen"] == fitted.best_iteration + 1
    assert fitted.booster.num_boosted_rounds() == regime["rounds_chosen"]
    # the learning curve is the held-out users' logloss of the final fit, every round
    assert len(fitted.evals_result["validation"]["logloss"]) == regime["rounds_chosen"]
    assert fitted.best_score == fitted.evals_result["validation"]["logloss"][-1]


def test_small_landing_training_is_reproducible(landing: FeatureRows, fitted, tmp_path: Path) -> None:
    """train_and_report twice through the pipeline's trainer: the same model.json bytes."""
    reports = [
        train_and_report(
            landing, tmp_path / f"run{run}", "2025-01-06", trainer=InProcessTrainer(POLICY), params=PARAMS
        )
        for run in (1, 2)
    ]
    files = [(report.model_dir / MODEL_FILE).read_bytes() for report in reports]
    assert files[0] == files[1] == bytes(fitted.booster.save_raw("json"))
    assert reports[0].card["training_regime"] == reports[1].card["training_regime"]
    assert reports[0].card["training_regime"]["name"] == SMALL_LANDING


def test_chosen_rounds_are_the_cross_validation_optimum_and_the_fit_uses_every_training_user(
    landing: FeatureRows, fitted
) -> None:
    """xgboost.cv run here, without early stopping, over user folds: the chosen rounds are the
    arg-min of its mean test logloss; the model is xgboost.train on all training users for them."""
    train_rows = np.setdiff1d(np.arange(landing.rows), fitted.validation_index)
    train_users = landing.user_ids[train_rows]
    folds = user_folds(train_users, POLICY.folds, seed=0)
    for train_part, test_part in folds:  # folds never split a user, and each row is tested once
        assert not set(train_users[train_part]) & set(train_users[test_part])
    assert np.array_equal(np.sort(np.concatenate([test for _, test in folds])), np.arange(train_rows.size))
    params, _ = regularised_params(PARAMS, landing.labels[train_rows], train_users, POLICY)
    assert fitted.params == params
    dtrain = xgb.DMatrix(
        landing.features[train_rows],
        label=landing.labels[train_rows],
        feature_names=list(landing.feature_names),
    )
    history = xgb.cv(params.booster_params(0), dtrain, num_boost_round=300, folds=folds, shuffle=False)
    curve = history["test-logloss-mean"].to_numpy()
    assert fitted.best_iteration + 1 == int(np.argmin(curve)) + 1 < 300
    assert fitted.regime["cross_validation"]["cv_logloss_mean"] == pytest.approx(curve.min(), rel=1e-9)
    refit = xgb.train(params.booster_params(0), dtrain, num_boost_round=fitted.best_iteration + 1)
    np.testing.assert_array_equal(
        predict(refit, landing.features, threads=1), predict(fitted.booster, landing.features, threads=1)
    )


def test_validation_logloss_is_not_worse_than_the_constant_rate(landing: FeatureRows, fitted) -> None:
    rows = fitted.validation_index
    train = np.setdiff1d(np.arange(landing.rows), rows)
    y = landing.labels[rows].astype(np.float64)
    rate = float(landing.labels[train].mean())
    constant = -np.mean(y * np.log(rate) + (1 - y) * np.log(1 - rate))
    p = np.clip(predict(fitted.booster, landing.features[rows], threads=1).astype(np.float64), 1e-7, 1 - 1e-7)
    model = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert model <= constant
    assert fitted.best_score == pytest.approx(model, abs=1e-5)


def test_capacity_follows_the_training_users(landing: FeatureRows, fitted) -> None:
    """min_child_weight and lambda: 10 average users' rows x p(1 - p); depth <= log2(users / 10)."""
    capacity = fitted.regime["capacity"]
    train = np.setdiff1d(np.arange(landing.rows), fitted.validation_index)
    rate = landing.labels[train].mean()
    leaf = 10 * (train.size / fitted.n_train_users) * rate * (1 - rate)
    assert capacity["leaf_hessian"] == pytest.approx(leaf, rel=1e-4)
    assert fitted.params.min_child_weight == fitted.params.reg_lambda == pytest.approx(leaf, abs=1e-4)
    assert fitted.params.max_depth == min(6, int(np.floor(np.log2(fitted.n_train_users / 10))))
    # hand-made: 40 users x 5 rows, 20% positive -> leaf 10 x 5 x 0.16 = 8 (< the default 10), depth 2
    users = np.repeat(np.arange(40), 5)
    labels = (np.arange(200) % 5 == 0).astype(np.float32)
    tight, detail = regularised_params(PARAMS, labels, users, POLICY)
    assert (tight.min_child_weight, tight.reg_lambda, tight.max_depth) == (10.0, 8.0, 2)
    assert detail.leaf_hessian == pytest.approx(8.0)


def test_threshold_and_p_none_fall_back_to_their_documented_defaults(
    landing: FeatureRows, tmp_path: Path
) -> None:
    report = train_and_report(landing, tmp_path / "model", "2025-01-06", params=PARAMS, small_data=POLICY)
    card = report.card
    n_validation = card["data_split"]["n_validation_users"]
    assert n_validation < 1_000
    assert report.metrics.threshold == DEFAULT_THRESHOLD == 0.2
    assert card["evaluation"]["threshold"].startswith(
        f"default 0.2: {n_validation} validation users, fewer than the 1,000 (500 per half)"
    )
    none = card["evaluation"]["none_probability"]
    assert none["use_calibrated"] is False and "too few validation orders" in none["reason"]
    assert card["training_regime"]["name"] == SMALL_LANDING  # the default trainer takes the policy


MID_USERS = 10_500  # above the 10,000-user limit
# sha256 of model.json for the mid-size fixture below, computed with the code before the small-landing
# regime existed (main at 81ff8a4: train_reorder_model had no small_data), xgboost 3.2.0, 1 thread.
MID_MODEL_SHA256_BEFORE = "84b213c604948e41cee7e4a32c3c5deabe51264a5301b4f4a24268fb8e149355"


def _mid_size() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    users = np.repeat(np.arange(MID_USERS), 6)
    x = rng.normal(size=(users.size, 4)).astype(np.float32)
    logit = 2.0 * x[:, 0] + 1.5 * x[:, 1] - 2.5
    labels = (rng.random(users.size) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return x, labels, users


def test_a_larger_landing_trains_exactly_as_before() -> None:
    x, labels, users = _mid_size()
    names = ("f0", "f1", "f2", "f3")
    params = ReorderModelParams(nthread=1, num_boost_round=100)
    with_policy = train_reorder_model(x, labels, users, names, params, small_data=POLICY)
    without = train_reorder_model(x, labels, users, names, params)
    model_json = bytes(with_policy.booster.save_raw("json"))
    assert model_json == bytes(without.booster.save_raw("json"))
    assert with_policy.params == without.params
    assert with_policy.regime["name"] == HOLDOUT
    assert "10,500 users, more than the small-landing limit of 10,000" in with_policy.regime["reason"]
    assert with_policy.regime["rounds_chosen"] == with_policy.best_iteration + 1
    if xgb.__version__ == "3.2.0" and MID_MODEL_SHA256_BEFORE:
        assert hashlib.sha256(model_json).hexdigest() == MID_MODEL_SHA256_BEFORE


def test_user_folds_deal_whole_users_evenly() -> None:
    users = np.random.default_rng(2).integers(0, 103, size=5_000)
    folds = user_folds(users, 5, seed=9)
    per_fold = [np.unique(users[test]).size for _, test in folds]
    assert sum(per_fold) == np.unique(users).size and max(per_fold) - min(per_fold) <= 1
    assert all(not set(users[a]) & set(users[b]) for a, b in folds)
    assert [t.tolist() for _, t in user_folds(users, 5, seed=9)] == [t.tolist() for _, t in folds]
    with pytest.raises(ValueError, match="needs at least 5 users, got 3"):
        user_folds(np.array([1, 2, 3]), 5, seed=0)


def test_policy_is_configured_through_the_training_resource_and_settings() -> None:
    assert ModelTrainingResource().small_data == SmallDataPolicy()
    resource = ModelTrainingResource(small_landing_max_users=0, cv_folds=3)
    assert (resource.small_data.max_users, resource.small_data.folds) == (0, 3)
    assert not resource.small_data.applies(10)
    settings = Settings.from_env({"INSTAREC_SMALL_LANDING_MAX_USERS": "500", "INSTAREC_CV_FOLDS": "4"})
    assert (settings.small_landing_max_users, settings.cv_folds) == (500, 4)
    with pytest.raises(SettingsError, match="INSTAREC_CV_FOLDS must be an integer of at least 2, not '1'"):
        Settings.from_env({"INSTAREC_CV_FOLDS": "1"})
    with pytest.raises(ValueError, match="at least 2 folds"):
        SmallDataPolicy(folds=1)
    with pytest.raises(ValueError, match="default_threshold"):
        SmallDataPolicy(default_threshold=1.5)


def test_xgboost_model_metadata_says_which_regime_ran(fitted) -> None:
    from instarec_assets.assets.models import regime_metadata

    metadata = regime_metadata(fitted.regime)
    assert metadata["training_regime"].value == SMALL_LANDING
    assert metadata["training_regime_reason"].value == fitted.regime["reason"]
    assert metadata["rounds_chosen"].value == fitted.best_iteration + 1
    assert metadata["training_users"].value == fitted.n_train_users
    assert metadata["cv_folds"].value == 5
    assert metadata["cv_logloss"].value == fitted.regime["cross_validation"]["cv_logloss_mean"]
    assert regime_metadata({}) == {}  # a kept model whose card predates the regimes
