"""Classification metrics and diagnostic plots for the reorder model on validation rows.

Plots are drawn on bare matplotlib Figures (Agg canvas, no pyplot state), so they are safe in
worker threads and never need a display; each is written as a PNG file the caller can attach.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from matplotlib.figure import Figure
from sklearn.metrics import classification_report, log_loss, precision_recall_curve, roc_auc_score

DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ClassificationMetrics:
    """Ranking quality (AUC), calibration (log loss) and the confusion counts at one threshold."""

    auc: float
    log_loss: float
    threshold: float
    precision: float
    recall: float
    f1: float
    accuracy: float
    predicted_positive_share: float
    n_rows: int
    n_positive: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _check(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool, copy=False)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError("labels and probabilities must be non-empty 1-d arrays of the same length")
    return y, p


def _at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = p >= threshold
    tp = int(np.count_nonzero(predicted & y))
    n_predicted = int(np.count_nonzero(predicted))
    n_actual = int(np.count_nonzero(y))
    precision = tp / n_predicted if n_predicted else 0.0
    recall = tp / n_actual if n_actual else 0.0
    f1 = 2 * tp / (n_predicted + n_actual) if n_predicted + n_actual else 0.0
    correct = tp + (y.size - n_predicted - n_actual + tp)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": correct / y.size,
        "predicted_positive_share": n_predicted / y.size,
    }


def best_f1_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The probability cut-off with the highest row-level F1 (exact, over every distinct score)."""
    y, p = _check(labels, probabilities)
    precision, recall, thresholds = precision_recall_curve(y, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float | None = None
) -> ClassificationMetrics:
    """All headline metrics; the threshold defaults to the one maximising F1 on these rows."""
    y, p = _check(labels, probabilities)
    if threshold is None:
        threshold = best_f1_threshold(y, p)
    both_classes = 0 < np.count_nonzero(y) < y.size
    return ClassificationMetrics(
        auc=float(roc_auc_score(y, p)) if both_classes else float("nan"),
        log_loss=float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[False, True])),
        threshold=float(threshold),
        n_rows=int(y.size),
        n_positive=int(np.count_nonzero(y)),
        **_at_threshold(y, p, threshold),
    )


def held_out_halves(user_ids: np.ndarray, seed: int) -> np.ndarray:
    """Row mask of a seeded half of the users (whole users): where a choice is made, the rest judge it."""
    ids = np.asarray(user_ids)
    users = np.unique(ids)
    chosen = np.random.default_rng(seed).permutation(users)[: users.size // 2]
    return np.isin(ids, chosen)


def classification_metrics_held_out(
    labels: np.ndarray, probabilities: np.ndarray, user_ids: np.ndarray, seed: int
) -> ClassificationMetrics:
    """AUC and log loss on every row; the F1-best threshold chosen on a seeded half of the users and
    precision, recall, F1 and accuracy at it measured on the other half, so they are not flattered by
    the choice. Fewer than 2 users (or one class in the choosing half): chosen and measured on all."""
    y, p = _check(labels, probabilities)
    choose = held_out_halves(user_ids, seed)
    judge = ~choose
    if not choose.any() or not judge.any() or not 0 < np.count_nonzero(y[choose]) < np.count_nonzero(choose):
        return classification_metrics(y, p)
    threshold = best_f1_threshold(y[choose], p[choose])
    everything = classification_metrics(y, p, threshold)
    return replace(everything, **_at_threshold(y[judge], p[judge], threshold))


def classification_report_text(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> str:
    """scikit-learn's per-class precision/recall/F1/support report at `threshold`."""
    y, p = _check(labels, probabilities)
    return classification_report(
        y,
        p >= threshold,
        labels=[False, True],
        target_names=["not reordered", "reordered"],
        digits=4,
        zero_division=0,
    )


def threshold_table(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """Precision, recall, F1, accuracy and predicted-positive share at each threshold."""
    y, p = _check(labels, probabilities)
    rows = [{"threshold": float(t), **_at_threshold(y, p, float(t))} for t in thresholds]
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame, floatfmt: str = ".4f") -> str:
    return table.to_markdown(index=False, floatfmt=floatfmt)


def feature_importance(booster: xgb.Booster, feature_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Average and total gain and split count per feature, best first; unused features get 0."""
    names = list(feature_names or booster.feature_names or [])
    gain = booster.get_score(importance_type="gain")
    total_gain = booster.get_score(importance_type="total_gain")
    weight = booster.get_score(importance_type="weight")
    table = pd.DataFrame(
        {
            "feature": names,
            "gain": [float(gain.get(n, 0.0)) for n in names],
            "total_gain": [float(total_gain.get(n, 0.0)) for n in names],
            "splits": [int(weight.get(n, 0)) for n in names],
        }
    )
    return table.sort_values(["gain", "feature"], ascending=[False, True], ignore_index=True)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path


def plot_threshold_analysis(
    table: pd.DataFrame, folder: str | Path, best_threshold: float | None = None
) -> Path:
    """Precision, recall and F1 against the threshold, from `threshold_table`."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for column in ("precision", "recall", "f1"):
        axes.plot(table["threshold"], table[column], marker="o", markersize=3, label=column)
    if best_threshold is not None:
        axes.axvline(
            best_threshold, color="grey", linestyle="--", label=f"best F1 threshold {best_threshold:.3f}"
        )
    axes.set(xlabel="threshold", ylabel="score", ylim=(0, 1), title="Validation: threshold analysis")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, Path(folder) / "threshold_analysis.png")


def plot_feature_importance(importance: pd.DataFrame, folder: str | Path, top: int = 25) -> Path:
    """Horizontal bars of average gain for the `top` features, from `feature_importance`."""
    shown = importance.nlargest(top, "gain").iloc[::-1]
    figure = Figure(figsize=(7, max(3.0, 0.28 * len(shown) + 1.2)))
    axes = figure.add_subplot()
    axes.barh(shown["feature"], shown["gain"], color="tab:blue")
    axes.set(xlabel="average gain per split", title=f"Feature importance (top {len(shown)} by gain)")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, Path(folder) / "feature_importance.png")


def plot_learning_curve(
    evals_result: Mapping[str, Mapping[str, Sequence[float]]],
    folder: str | Path,
    best_iteration: int | None = None,
    metric: str = "logloss",
) -> Path:
    """Train and validation `metric` per boosting round, with the early-stopping choice marked."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for name, metrics in evals_result.items():
        values = metrics.get(metric, [])
        axes.plot(np.arange(1, len(values) + 1), values, label=name)
    if best_iteration is not None:
        axes.axvline(
            best_iteration + 1, color="grey", linestyle="--", label=f"best round {best_iteration + 1}"
        )
    axes.set(xlabel="boosting round", ylabel=metric, title=f"Learning curve ({metric})")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, Path(folder) / f"learning_curve_{metric}.png")


def png_markdown(path: str | Path, title: str | None = None) -> str:
    """`![title](data:image/png;base64,...)` so a PNG shows inline in Dagster's markdown metadata."""
    path = Path(path)
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{title or path.stem}](data:image/png;base64,{encoded})"
