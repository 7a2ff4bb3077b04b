"""Classification metrics on arrays whose answers are known, and the diagnostic PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from instarec_assets.ml.metrics import (
    PNG_SIGNATURE,
    best_f1_threshold,
    classification_metrics,
    classification_report_text,
    feature_importance,
    plot_feature_importance,
    plot_learning_curve,
    plot_threshold_analysis,
    png_markdown,
    table_markdown,
    threshold_table,
)

LABELS = np.array([0, 0, 0, 1, 0, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.9])


def test_perfect_ranking() -> None:
    metrics = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert metrics.auc == 1.0
    assert (metrics.f1, metrics.precision, metrics.recall, metrics.accuracy) == (1.0, 1.0, 1.0, 1.0)
    assert metrics.threshold == 0.8
    assert (metrics.n_rows, metrics.n_positive, metrics.predicted_positive_share) == (4, 2, 0.5)


def test_metrics_by_hand() -> None:
    metrics = classification_metrics(LABELS, SCORES, threshold=0.5)
    assert metrics.auc == pytest.approx(15 / 16)
    assert (metrics.precision, metrics.recall, metrics.accuracy) == (1.0, 0.75, 7 / 8)
    assert metrics.f1 == pytest.approx(6 / 7)
    expected_log_loss = -np.mean(np.where(LABELS == 1, np.log(SCORES), np.log(1 - SCORES)))
    assert metrics.log_loss == pytest.approx(expected_log_loss)
    assert best_f1_threshold(LABELS, SCORES) == 0.35
    assert classification_metrics(LABELS, SCORES).f1 == pytest.approx(8 / 9)


def test_threshold_table_by_hand_and_monotone() -> None:
    table = threshold_table(LABELS, SCORES)
    assert list(table.columns) == [
        "threshold",
        "precision",
        "recall",
        "f1",
        "accuracy",
        "predicted_positive_share",
    ]
    assert table["threshold"].tolist() == pytest.approx([0.05 * i for i in range(1, 20)])
    row = table.loc[table["threshold"] == 0.5].iloc[0]
    assert (row["precision"], row["recall"], row["predicted_positive_share"]) == (1.0, 0.75, 3 / 8)
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.2
    scores = np.clip(labels * 0.3 + rng.random(5000) * 0.7, 0, 1)
    big = threshold_table(labels, scores)
    assert big["recall"].is_monotonic_decreasing
    assert big["predicted_positive_share"].is_monotonic_decreasing
    assert table_markdown(table).startswith("|   threshold |")


def test_classification_report_text() -> None:
    report = classification_report_text(LABELS, SCORES, threshold=0.5)
    assert "not reordered" in report and "reordered" in report and "accuracy" in report
    assert "0.7500" in report


def _booster() -> xgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    data = xgb.DMatrix(x, label=y, feature_names=["strong", "unused_a", "unused_b"])
    return xgb.train({"objective": "binary:logistic", "nthread": 1, "max_depth": 2}, data, 3)


def test_feature_importance_lists_every_feature() -> None:
    importance = feature_importance(_booster())
    assert importance["feature"].iloc[0] == "strong"
    assert set(importance["feature"]) == {"strong", "unused_a", "unused_b"}
    assert (importance["gain"] >= 0).all()


def test_plots_are_png_files(tmp_path: Path) -> None:
    table = threshold_table(LABELS, SCORES)
    history = {"train": {"logloss": [0.6, 0.5, 0.45]}, "validation": {"logloss": [0.62, 0.55, 0.56]}}
    paths = [
        plot_threshold_analysis(table, tmp_path, best_threshold=0.35),
        plot_feature_importance(feature_importance(_booster()), tmp_path / "sub"),
        plot_learning_curve(history, tmp_path, best_iteration=1),
    ]
    assert [p.name for p in paths] == [
        "threshold_analysis.png",
        "feature_importance.png",
        "learning_curve_logloss.png",
    ]
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    markdown = png_markdown(paths[0], "Threshold analysis")
    assert markdown.startswith("![Threshold analysis](data:image/png;base64,iVBORw0KGgo")
    assert markdown.endswith(")")


def test_threshold_is_chosen_on_half_the_users_and_judged_on_the_other() -> None:
    from instarec_assets.ml.metrics import (
        _at_threshold,
        best_f1_threshold,
        classification_metrics_held_out,
        held_out_halves,
    )

    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(200), 10)
    probabilities = rng.random(users.size)
    labels = rng.random(users.size) < probabilities
    choose = held_out_halves(users, seed=9)
    assert choose.sum() == 1000  # whole users, half of them
    assert not set(users[choose]) & set(users[~choose])
    held_out = classification_metrics_held_out(labels, probabilities, users, seed=9)
    threshold = best_f1_threshold(labels[choose], probabilities[choose])
    judged = _at_threshold(labels[~choose], probabilities[~choose], threshold)
    assert held_out.threshold == threshold
    assert (held_out.precision, held_out.recall, held_out.f1) == (
        judged["precision"],
        judged["recall"],
        judged["f1"],
    )
    # AUC and log loss still use every row, and the F1 on the choosing half would flatter the threshold.
    everything = classification_metrics(labels, probabilities, threshold)
    assert (held_out.auc, held_out.log_loss, held_out.n_rows) == (everything.auc, everything.log_loss, 2000)
