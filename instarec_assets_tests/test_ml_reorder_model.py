"""load_feature_rows and the ablation fit of train_and_report, on a real parquet feature set."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.ml import reorder_model
from instarec_assets.ml.none_probability import CALIBRATION_FILE, read_none_calibration
from instarec_assets.ml.reorder_model import (
    HISTORY_COUNT_COLUMN,
    LAST_ORDER_COLUMN,
    MODEL_FILE,
    load_feature_rows,
    train_and_report,
)
from instarec_assets.ml.training import ReorderModelParams, split_users

FEATURES = (HISTORY_COUNT_COLUMN, LAST_ORDER_COLUMN, "signal", "noise")


class CountingTrainer(reorder_model.InProcessTrainer):
    """The in-process trainer, counting its fits (how much fitting an ablation costs)."""

    def __init__(self) -> None:
        self.fits = 0

    def train(self, *args, **kwargs):
        self.fits += 1
        return super().train(*args, **kwargs)


@pytest.fixture(scope="module")
def feature_set(tmp_path_factory) -> str:
    """3,000 users x 8 candidates; the label follows `signal` (and a bit of up_orders)."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 3001), 8)
    products = np.tile(np.arange(1, 9), 3000)
    signal = rng.normal(size=users.size).astype(np.float32)
    up_orders = rng.integers(1, 6, size=users.size)
    label = (signal + 0.2 * up_orders + rng.normal(scale=0.5, size=users.size) > 1.2).astype(np.int8)
    table = pa.table(
        {
            "user_id": users.astype(np.int32),
            "product_id": products.astype(np.int32),
            "order_id": (users * 10).astype(np.int32),
            "eval_set": np.where(users % 7 == 0, "serving", "train"),
            "label": label,
            HISTORY_COUNT_COLUMN: up_orders.astype(np.int32),
            LAST_ORDER_COLUMN: rng.integers(0, 2, size=users.size).astype(np.int8),
            "signal": signal,
            "noise": rng.normal(size=users.size).astype(np.float32),
        }
    )
    path = tmp_path_factory.mktemp("features") / "training_set.parquet"
    pq.write_table(table, path)
    return str(path)


def test_computed_features_are_filled_from_the_row_ids_and_strings_are_shared(feature_set: str) -> None:
    seen = {}

    def user_parity(user_ids, product_ids, eval_sets):
        seen["eval_sets"] = eval_sets
        return (user_ids % 2).astype(np.float32)

    data = load_feature_rows(
        duckdb.connect(),
        feature_set,
        (*FEATURES, "parity"),
        with_labels=True,
        computed={"parity": user_parity},
    )
    stored = pq.read_table(feature_set)
    assert data.feature_names[-1] == "parity" and data.features.shape == (24_000, 5)
    np.testing.assert_array_equal(data.features[:, -1], data.user_ids % 2)
    np.testing.assert_array_equal(data.features[:, 2], stored.column("signal").to_numpy())
    assert data.eval_sets.tolist() == stored.column("eval_set").to_pylist()
    assert seen["eval_sets"] is data.eval_sets
    serving = data.eval_sets[data.eval_sets == "serving"]
    assert len({id(value) for value in serving}) == 1  # one str object for every serving row


def test_ablation_fits_without_the_feature_and_leaves_the_data_untouched(
    feature_set: str, tmp_path: Path
) -> None:
    data = load_feature_rows(duckdb.connect(), feature_set, FEATURES, with_labels=True)
    before = data.features.copy()
    params = ReorderModelParams(num_boost_round=60, early_stopping_rounds=10, nthread=1)
    trainer = CountingTrainer()
    report = train_and_report(
        data, tmp_path / "model", "2025-01-06", trainer=trainer, params=params, ablate="signal"
    )
    ablation = report.card["ablation"]
    assert ablation["feature"] == "signal"
    # the label follows `signal`: it earns its place, and the served model is the "with" fit (of
    # every user here, so it is not fitted a third time)
    assert trainer.fits == 2
    assert ablation["kept"] and ablation["in_model"] and ablation["decision"].startswith("kept: F1 gain +")
    assert ablation["f1_gain"] > 2 * ablation["f1_gain_standard_error"] > 0
    assert report.card["features"] == list(FEATURES)
    assert ablation["validation_mean_f1_with"] == report.baskets.model_f1
    assert ablation["validation_auc_with"] > ablation["validation_auc_without"] + 0.1
    np.testing.assert_array_equal(data.features, before)
    card = report.card
    assert "reorder" in card["intended_use"] and len(card["limitations"]) >= 3
    assert card["reproducibility"]["training_data_sha256"]
    assert card["evaluation"]["basket_f1"][0]["method"] == "model: expected-F1 baskets"
    ranking = {row["method"]: row for row in card["evaluation"]["ranking"]}
    assert set(ranking) == {
        "model: reorder probability",
        "baseline: personal top-frequency",
        "baseline: last order",
        "baseline: global popularity",
    }
    model_row = ranking["model: reorder probability"]
    # ranked users: the held-out users whose next order reorders something (recall needs one)
    _, held_out = split_users(data.user_ids, 0.1, seed=0)
    assert model_row["users"] == np.unique(data.user_ids[held_out & (data.labels == 1)]).size < 300
    # the label follows `signal`, which only the model sees: it must rank far better than counts
    assert model_row["ndcg@10"] > ranking["baseline: personal top-frequency"]["ndcg@10"] + 0.1
    assert model_row["repeat_share"] == 1.0  # every candidate is a product bought before
    # 300 held-out users: too few to judge a P(None) calibration, so the baskets keep independence
    none = card["evaluation"]["none_probability"]
    assert (none["use_calibrated"], none["fit_orders"] + none["eval_orders"]) == (False, 300)
    assert "too few validation orders" in none["reason"]
    assert (tmp_path / "model" / CALIBRATION_FILE).exists()
    assert read_none_calibration(tmp_path / "model") is None
    with pytest.raises(ValueError, match="cannot ablate 'missing'"):
        train_and_report(data, tmp_path / "other", "2025-01-06", params=params, ablate="missing")


class RecordingTrainer(reorder_model.InProcessTrainer):
    """The in-process trainer, keeping the rows and the model of its last fit."""

    def train(self, data, *args, **kwargs):
        self.data = data
        self.model = super().train(data, *args, **kwargs)
        return self.model


def test_earlier_targets_train_but_never_validate(feature_set: str, tmp_path: Path) -> None:
    """Every third `train` user gains an earlier target (its 8 candidates again, eval_set
    train_earlier, other labels). They add training rows only: the held-out orders, the baselines and
    the ranking report's baseline rows are those of the same rows without them, and a held-out
    user's earlier rows are not trained on."""
    stored = pq.read_table(feature_set).to_pandas()
    earlier = stored[(stored.eval_set == "train") & (stored.user_id % 3 == 0)].copy()
    earlier["eval_set"] = "train_earlier"
    earlier["order_id"] = earlier.order_id - 1
    earlier["label"] = np.random.default_rng(1).integers(0, 2, size=len(earlier)).astype(np.int8)
    path = tmp_path / "with_earlier.parquet"
    pq.write_table(pa.Table.from_pandas(pd.concat([stored, earlier]), preserve_index=False), path)
    params = ReorderModelParams(num_boost_round=30, early_stopping_rounds=5, nthread=1)
    conn = duckdb.connect()
    with_earlier = load_feature_rows(conn, str(path), FEATURES, with_labels=True)
    assert (~with_earlier.validates).sum() == len(earlier)
    trainer = RecordingTrainer()
    report = train_and_report(with_earlier, tmp_path / "with", "2025-01-06", trainer=trainer, params=params)
    plain = train_and_report(
        load_feature_rows(conn, feature_set, FEATURES, with_labels=True),
        tmp_path / "plain",
        "2025-01-06",
        params=params,
    )
    model = trainer.model
    assert "train_earlier" not in set(with_earlier.eval_sets[model.validation_index])
    held_out = np.isin(with_earlier.user_ids, model.validation_user_ids)
    held_out_earlier = int((held_out & ~with_earlier.validates).sum())
    assert held_out_earlier > 0
    assert model.n_train_rows == int((~held_out).sum())  # their earlier rows are in neither part
    assert report.card["data_split"]["n_validation_users"] == plain.card["data_split"]["n_validation_users"]
    assert report.baskets.n_orders == plain.baskets.n_orders
    assert report.baskets.last_order_f1 == plain.baskets.last_order_f1
    assert report.baskets.frequency_f1 == plain.baskets.frequency_f1
    rows = {r["method"]: r for r in report.card["evaluation"]["ranking"]}
    plain_rows = {r["method"]: r for r in plain.card["evaluation"]["ranking"]}
    for method in ("baseline: personal top-frequency", "baseline: last order", "baseline: global popularity"):
        assert pd.Series(rows[method]).equals(pd.Series(plain_rows[method]))  # NaN equals NaN here
    targets = reorder_model.training_targets(with_earlier)
    assert (targets["earlier_rows"], targets["earlier_orders"]) == (len(earlier), len(earlier) // 8)
    assert targets["target_rows"] == with_earlier.rows - len(earlier)
    assert with_earlier.without_earlier_targets().rows == targets["target_rows"]


def test_a_feature_that_only_ties_is_left_out_of_the_served_model(feature_set: str, tmp_path: Path) -> None:
    """`noise` carries nothing: the served model is fitted without it, and is the very model fitted
    on a feature set that never had it (same bytes, same training-data fingerprint)."""
    data = load_feature_rows(duckdb.connect(), feature_set, FEATURES, with_labels=True)
    params = ReorderModelParams(num_boost_round=60, early_stopping_rounds=10, nthread=1)
    trainer = CountingTrainer()
    report = train_and_report(
        data, tmp_path / "model", "2025-01-06", trainer=trainer, params=params, ablate="noise"
    )
    ablation = report.card["ablation"]
    assert not ablation["kept"] and not ablation["in_model"]
    assert trainer.fits == 3  # with, without (a constant column), then the served fit without it
    assert ablation["f1_gain"] <= 2 * ablation["f1_gain_standard_error"]
    assert (
        ablation["decision"].startswith("left out: F1 gain") and "does without noise" in ablation["decision"]
    )
    assert ablation["validation_orders"] == report.card["data_split"]["n_validation_users"]
    assert report.card["features"] == list(FEATURES[:-1])
    assert data.feature_names == FEATURES  # the caller's rows are untouched

    direct = load_feature_rows(duckdb.connect(), feature_set, FEATURES[:-1], with_labels=True)
    plain = train_and_report(direct, tmp_path / "plain", "2025-01-06", params=params)
    assert (tmp_path / "model" / MODEL_FILE).read_bytes() == (tmp_path / "plain" / MODEL_FILE).read_bytes()
    assert (
        report.card["reproducibility"]["training_data_sha256"]
        == plain.card["reproducibility"]["training_data_sha256"]
    )

    kept = train_and_report(
        data, tmp_path / "kept", "2025-01-06", params=params, ablate="noise", keep_ablated=True
    )
    assert kept.card["features"] == list(FEATURES) and kept.card["ablation"]["in_model"]
    assert not kept.card["ablation"]["kept"]


def test_without_feature_drops_a_middle_column_too(feature_set: str) -> None:
    data = load_feature_rows(duckdb.connect(), feature_set, FEATURES, with_labels=True)
    fewer = reorder_model.without_feature(data, "signal")
    assert fewer.feature_names == (HISTORY_COUNT_COLUMN, LAST_ORDER_COLUMN, "noise")
    np.testing.assert_array_equal(fewer.features, data.features[:, [0, 1, 3]])


def test_ablation_with_many_users_fits_both_models_on_a_user_sample(
    feature_set: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above ABLATION_MAX_USERS users, with and without are both fitted on the same sample, and the
    card says so; the served model is still fitted on every user."""
    monkeypatch.setattr(reorder_model, "ABLATION_MAX_USERS", 1_000)
    data = load_feature_rows(duckdb.connect(), feature_set, FEATURES, with_labels=True)
    params = ReorderModelParams(num_boost_round=60, early_stopping_rounds=10, nthread=1)
    trainer = CountingTrainer()
    report = train_and_report(
        data, tmp_path / "model", "2025-01-06", trainer=trainer, params=params, ablate="signal"
    )
    ablation = report.card["ablation"]
    assert trainer.fits == 3  # with and without on the sample, then the served fit on every user
    assert ablation["n_users"] == 1_000
    assert ablation["users"] == "sample of 1000 of 3000 users (seed 0); both models fitted on it"
    assert ablation["validation_auc_with"] > ablation["validation_auc_without"] + 0.1
    assert ablation["validation_mean_f1_with"] != report.baskets.model_f1  # the sample's own model
    assert (
        report.card["data_split"]["n_train_users"] + report.card["data_split"]["n_validation_users"] == 3000
    )
    again = train_and_report(data, tmp_path / "again", "2025-01-06", params=params, ablate="signal")
    assert again.card["ablation"] == ablation


def test_shuffled_feature_set_loads_in_the_same_order_and_trains_the_same_model(
    feature_set: str, tmp_path: Path
) -> None:
    """The same rows in another file order (as a multi-threaded DuckDB write gives them): the same
    arrays, and a bit-identical model.json and card fingerprint from train_and_report."""
    stored = pq.read_table(feature_set)
    shuffled = tmp_path / "shuffled.parquet"
    pq.write_table(
        stored.take(np.random.default_rng(1).permutation(stored.num_rows)), shuffled, row_group_size=2_000
    )
    conn = duckdb.connect()
    data = load_feature_rows(conn, feature_set, FEATURES, with_labels=True)
    again = load_feature_rows(conn, str(shuffled), FEATURES, with_labels=True)
    for name in ("features", "user_ids", "product_ids", "order_ids", "eval_sets", "labels"):
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name))
    params = ReorderModelParams(num_boost_round=30, early_stopping_rounds=10)
    reports = [
        train_and_report(rows, tmp_path / f"model{run}", "2025-01-06", params=params, seed=5, threads=2)
        for run, rows in enumerate((data, again))
    ]
    model_files = [(report.model_dir / MODEL_FILE).read_bytes() for report in reports]
    assert model_files[0] == model_files[1]
    cards = [report.card["reproducibility"] for report in reports]
    assert cards[0] == cards[1]
    assert cards[0]["seed"] == 5 and cards[0]["nthread"] == 2 == reports[0].card["parameters"]["nthread"]
    assert len(cards[0]["training_data_sha256"]) == 64
    assert reports[0].metrics.auc == reports[1].metrics.auc


def _kept():
    from instarec_assets.ml.retrain import RetrainDecision

    return RetrainDecision(
        retrain=False, reason="kept", batches_since=1, age_days=7, drift=0.0, trained_on_batch="2025-01-06"
    )


def test_a_kept_model_is_evaluated_on_a_seeded_bounded_sample_of_validation_users(
    feature_set: str, tmp_path: Path
) -> None:
    """Keeping a model evaluates it on at most `evaluation_max_users` validation users, drawn by the
    split's seed (the same users twice), and the card and its evaluation say so."""
    from instarec_assets.ml.reorder_model import EVALUATION_SAMPLE, train_or_keep

    data = load_feature_rows(duckdb.connect(), feature_set, FEATURES, with_labels=True)
    params = ReorderModelParams(num_boost_round=40, early_stopping_rounds=10, nthread=1)
    fitted = train_and_report(data, tmp_path / "fitted", "2025-01-06", params=params)
    assert fitted.card["data_split"]["n_validation_users"] == 300  # all of them when fitted
    assert EVALUATION_SAMPLE not in fitted.card
    kept = [
        train_or_keep(
            data,
            tmp_path / f"kept-{run}",
            "2025-01-13",
            _kept(),
            previous=tmp_path / "fitted",
            threads=1,
            evaluation_max_users=100,
        )
        for run in (1, 2)
    ]
    card = kept[0].card
    assert card["data_split"]["n_validation_users"] == 100
    assert card[EVALUATION_SAMPLE]["validation_users"] == 300
    assert card[EVALUATION_SAMPLE]["evaluated_users"] == 100
    assert "seeded sample of 100 of the batch's 300 validation users" in card["evaluation"]["users"]
    assert card["metrics"] == kept[1].card["metrics"]
    assert kept[0].baskets.model_f1 == kept[1].baskets.model_f1
    assert (tmp_path / "kept-1" / MODEL_FILE).read_bytes() == (tmp_path / "fitted" / MODEL_FILE).read_bytes()


def test_a_kept_model_reads_only_its_sample_and_is_judged_as_on_every_row(
    feature_set: str, tmp_path: Path
) -> None:
    """Reading only the kept model's sample (its validation and training users, by the split's seed)
    gives the same card, baskets and drift as handing it the whole feature set: the increment reads
    a bounded sample instead of the history."""
    from instarec_assets.ml.reorder_model import (
        EVALUATION_SAMPLE,
        decide_reorder_model,
        kept_evaluation_sample_from_lake,
        train_or_keep,
    )
    from instarec_assets.ml.retrain import RetrainPolicy, decide

    conn = duckdb.connect()
    everything = load_feature_rows(conn, feature_set, FEATURES, with_labels=True)
    first = decide(RetrainPolicy(), None, "2025-01-06", 0, float("nan"))
    fitted = train_or_keep(everything, tmp_path / "fitted", "2025-01-06", first, threads=1)
    sample = kept_evaluation_sample_from_lake(conn, feature_set, fitted.card, max_users=100)
    assert (sample.validation_users.size, sample.training_users.size) == (100, 100)
    assert (
        sample.validation_total == 300 and not np.isin(sample.validation_users, sample.training_users).any()
    )
    rows = load_feature_rows(conn, feature_set, FEATURES, with_labels=True, users=sample.users)
    assert np.array_equal(np.unique(rows.user_ids), sample.users)
    assert rows.rows < everything.rows / 10

    def keep(data, folder, given):
        return train_or_keep(
            data,
            tmp_path / folder,
            "2025-01-13",
            _kept(),
            previous=tmp_path / "fitted",
            threads=1,
            evaluation_max_users=100,
            sample=given,
        )

    whole, sampled = keep(everything, "whole", None), keep(rows, "sampled", sample)
    for key in ("metrics", "evaluation", "data_split", EVALUATION_SAMPLE):  # NaN equals NaN in JSON
        assert json.dumps(whole.card[key], sort_keys=True) == json.dumps(sampled.card[key], sort_keys=True), (
            key
        )
    assert sampled.card[EVALUATION_SAMPLE]["catalogue_products"] == np.unique(everything.product_ids).size
    decision, _ = decide_reorder_model(
        rows, tmp_path / "fitted", RetrainPolicy(), "2025-01-13", lambda batch: 1, sample=sample
    )
    assert "200 users sampled by seed" in decision.drift_detail["current_users"]
    assert decision.drift_detail["current_rows"] == rows.rows
    assert 0 <= decision.drift < RetrainPolicy().drift_threshold and not decision.retrain


def test_a_kept_model_that_lost_its_signal_still_fails_the_baseline_check(
    feature_set: str, tmp_path: Path
) -> None:
    """The bounded evaluation keeps the blocking check meaningful: a kept model fitted on inverted
    labels ranks the reorders last and does not beat the baselines on the sample."""
    from dataclasses import replace as replace_rows

    from instarec_assets.ml.reorder_model import train_or_keep

    data = load_feature_rows(duckdb.connect(), feature_set, FEATURES, with_labels=True)
    params = ReorderModelParams(num_boost_round=40, early_stopping_rounds=10, nthread=1)
    inverted = replace_rows(data, labels=(1 - data.labels).astype(np.int8))
    train_and_report(inverted, tmp_path / "inverted", "2025-01-06", params=params)
    train_and_report(data, tmp_path / "good", "2025-01-06", params=params)
    kept_bad = train_or_keep(
        data,
        tmp_path / "kept-bad",
        "2025-01-13",
        _kept(),
        previous=tmp_path / "inverted",
        threads=1,
        evaluation_max_users=100,
    )
    kept_good = train_or_keep(
        data,
        tmp_path / "kept-good",
        "2025-01-13",
        _kept(),
        previous=tmp_path / "good",
        threads=1,
        evaluation_max_users=100,
    )
    assert kept_bad.card["data_split"]["n_validation_users"] == 100
    assert not kept_bad.beats_baselines
    assert kept_good.beats_baselines
