"""Training the reorder model on small synthetic problems: signal is learnt, noise stops early,
users never straddle the split, and the saved JSON model and card are complete and exact."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from instarec_assets.ml.metrics import classification_metrics
from instarec_assets.ml.training import (
    MODEL_CARD_KEYS,
    ReorderModelParams,
    TrainedModel,
    build_model_card,
    code_version,
    load_model,
    predict,
    save_model,
    split_users,
    train_reorder_model,
    training_data_fingerprint,
    write_model_card,
)

FEATURES = ("up_orders", "up_reorder_rate", "noise_a", "noise_b", "noise_c")
FAST = ReorderModelParams(nthread=1, num_boost_round=200, early_stopping_rounds=10)


def _problem(signal: bool, users: int = 2000, candidates: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    user_ids = np.repeat(np.arange(10, 10 + users), candidates)
    x = rng.normal(size=(user_ids.size, len(FEATURES))).astype(np.float32)
    logit = 2.0 * x[:, 0] + 1.5 * x[:, 1] - 2.0 if signal else np.full(user_ids.size, -1.5)
    labels = (rng.random(user_ids.size) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return x, labels, user_ids


@pytest.fixture(scope="module")
def planted() -> tuple[TrainedModel, np.ndarray, np.ndarray, np.ndarray]:
    x, labels, user_ids = _problem(signal=True)
    return (
        train_reorder_model(x, labels, user_ids, FEATURES, FAST, validation_fraction=0.2, seed=3),
        x,
        labels,
        user_ids,
    )


def test_learns_planted_signal(planted) -> None:
    model, x, labels, _ = planted
    rows = model.validation_index
    metrics = classification_metrics(labels[rows], predict(model.booster, x[rows]))
    assert metrics.auc > 0.8
    assert model.booster.num_boosted_rounds() == model.best_iteration + 1
    assert model.feature_names == FEATURES
    history = model.evals_result
    assert set(history) == {"validation"}  # only validation logloss is computed each round
    assert set(history["validation"]) == {"logloss"}
    assert len(history["validation"]["logloss"]) == model.n_rounds_trained
    assert model.best_score == pytest.approx(min(history["validation"]["logloss"]))


def test_validation_split_is_by_user(planted) -> None:
    model, _, _, user_ids = planted
    validation_users = set(user_ids[model.validation_index].tolist())
    train_users = set(np.delete(user_ids, model.validation_index).tolist())
    assert not validation_users & train_users
    assert validation_users == set(model.validation_user_ids.tolist())
    assert len(validation_users) == 400
    assert model.n_train_users == 1600
    assert model.n_train_rows + model.validation_index.size == user_ids.size


def test_split_users_is_deterministic_and_whole() -> None:
    user_ids = np.random.default_rng(1).integers(0, 500, size=20_000)
    train, validation = split_users(user_ids, 0.1, seed=5)
    again_train, _ = split_users(user_ids, 0.1, seed=5)
    assert np.array_equal(train, again_train)
    assert not set(user_ids[train]) & set(user_ids[validation])
    assert len(set(user_ids[validation])) == round(0.1 * len(set(user_ids)))
    with pytest.raises(ValueError, match="validation_fraction"):
        split_users(user_ids, 1.0, seed=0)


def test_rows_that_may_not_validate_leave_a_held_out_user_out_of_both_masks() -> None:
    """A held-out user's extra (earlier) targets neither validate nor train; the users drawn are the
    same as without the mask."""
    user_ids = np.repeat(np.arange(200), 4)
    validates = np.tile([True, True, False, False], 200)
    train, validation = split_users(user_ids, 0.1, seed=3, validates=validates)
    plain_train, plain_validation = split_users(user_ids, 0.1, seed=3)
    np.testing.assert_array_equal(train, plain_train)
    np.testing.assert_array_equal(validation, plain_validation & validates)
    held_out = set(user_ids[plain_validation].tolist())
    neither = ~train & ~validation
    assert set(user_ids[neither].tolist()) == held_out and not validates[neither].any()
    assert neither.sum() == 2 * len(held_out) == 40
    # users with only such rows (a last order still without lines) always train, and never shift the draw
    more_users = np.concatenate([user_ids, np.repeat(np.arange(200, 260), 2)])
    more_validates = np.concatenate([validates, np.zeros(120, dtype=bool)])
    more_train, more_validation = split_users(more_users, 0.1, seed=3, validates=more_validates)
    np.testing.assert_array_equal(more_validation[: user_ids.size], validation)
    assert more_train[user_ids.size :].all()


def test_early_stopping_stops_before_max_rounds_on_noise() -> None:
    x, labels, user_ids = _problem(signal=False, users=1000, seed=1)
    model = train_reorder_model(x, labels, user_ids, FEATURES, FAST, seed=1)
    assert model.n_rounds_trained < FAST.num_boost_round
    assert model.n_rounds_trained == model.best_iteration + 1 + FAST.early_stopping_rounds


def test_json_round_trip_predicts_exactly(planted, tmp_path: Path) -> None:
    model, x, _, _ = planted
    path = save_model(model.booster, tmp_path / "model" / "model.json")
    assert json.loads(path.read_text())["learner"]["feature_names"] == list(FEATURES)
    loaded = load_model(path, threads=1)
    assert np.array_equal(predict(loaded, x), predict(model.booster, x))
    assert np.array_equal(predict(loaded, x, chunk_rows=7_001), predict(loaded, x))
    with pytest.raises(ValueError, match="json"):
        save_model(model.booster, tmp_path / "model.pkl")


def test_model_card_has_required_keys(planted, tmp_path: Path) -> None:
    model, *_ = planted
    card = build_model_card(
        model,
        metrics={"auc": np.float32(0.9), "mean_f1": 0.4},
        data_partition="2017-05-01",
        code_version=code_version(),
    )
    path = write_model_card(tmp_path / "model_card.json", card)
    written = json.loads(path.read_text())
    assert set(MODEL_CARD_KEYS) <= set(written)
    assert written["features"] == list(FEATURES)
    assert written["parameters"]["objective"] == "binary:logistic"
    assert written["parameters"]["tree_method"] == "hist"
    assert written["data_partition"] == "2017-05-01"
    assert written["data_split"]["n_validation_users"] == 400
    assert written["metrics"]["auc"] == pytest.approx(0.9)
    assert written["reproducibility"]["seed"] == 3 == written["parameters"]["seed"]
    assert written["reproducibility"]["nthread"] == 1 == written["parameters"]["nthread"]
    assert written["reproducibility"]["training_data_sha256"] == model.data_sha256
    with pytest.raises(ValueError, match="code_version"):
        write_model_card(tmp_path / "bad.json", {k: v for k, v in card.items() if k != "code_version"})


def test_code_version_names_the_package_version() -> None:
    assert code_version().split("+")[0] == metadata.version("instarec")


def test_rejects_unlabelled_rows() -> None:
    x, labels, user_ids = _problem(signal=True, users=50)
    labels[3] = np.nan
    with pytest.raises(ValueError, match="labels"):
        train_reorder_model(x, labels, user_ids, FEATURES, FAST)


def test_same_rows_seed_and_threads_give_a_bit_identical_model(tmp_path: Path) -> None:
    """Two fits of the same rows: the same model.json bytes and the same predictions, exactly; the
    subsampling (0.8 rows, 0.8 columns) and the learning-curve sample all follow the seed."""
    x, labels, user_ids = _problem(signal=True, users=1500, seed=4)
    x[np.random.default_rng(5).random(x.shape) < 0.05] = np.nan  # missing values take a default branch
    params = ReorderModelParams(nthread=2, num_boost_round=40, early_stopping_rounds=10)
    fits = [train_reorder_model(x, labels, user_ids, FEATURES, params, seed=11) for _ in range(2)]
    paths = [save_model(fit.booster, tmp_path / f"run{run}" / "model.json") for run, fit in enumerate(fits)]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert np.array_equal(predict(fits[0].booster, x, threads=2), predict(fits[1].booster, x, threads=1))
    assert (
        fits[0].data_sha256 == fits[1].data_sha256 == training_data_fingerprint(x, labels, user_ids, FEATURES)
    )
    assert fits[0].params.nthread == 2
    other = train_reorder_model(x, labels, user_ids, FEATURES, params, seed=12)
    assert bytes(other.booster.save_raw("json")) != paths[0].read_bytes()


def test_fingerprint_follows_the_rows_and_their_order() -> None:
    x, labels, user_ids = _problem(signal=True, users=50)
    base = training_data_fingerprint(x, labels, user_ids, FEATURES)
    assert base == training_data_fingerprint(x.copy(), labels.astype(np.int8), user_ids, FEATURES)
    swapped = np.r_[1, 0, 2 : user_ids.size]
    assert base != training_data_fingerprint(x[swapped], labels[swapped], user_ids[swapped], FEATURES)
    changed = x.copy()
    changed[7, 2] += 1e-6
    assert base != training_data_fingerprint(changed, labels, user_ids, FEATURES)
    assert base != training_data_fingerprint(x, labels, user_ids, (*FEATURES[:-1], "renamed"))


def test_thread_count_defaults_to_the_usable_cpus() -> None:
    from instarec_assets.compute import usable_cpus

    assert ReorderModelParams().booster_params(0)["nthread"] == usable_cpus()
