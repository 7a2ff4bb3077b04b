"""The probability that an order reorders nothing ("None"), calibrated on held-out users.

Independence puts P(None) at prod(1 - p) over the order's candidates, which real baskets contradict
(what a shopper reorders is correlated), and the expected-F1 choice leans on that number. A logistic
calibration from the order's own predictions (log prod(1 - p), sum and max of p, candidate count)
is fitted on one half of the validation users, whose predictions the booster never trained on, and
kept only if it raises mean F1 on the other half by more than two standard errors of the per-order
paired difference. Otherwise (or with too few validation orders) baskets keep independence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from instarec_assets.ml.baskets import select_baskets
from instarec_assets.ml.evaluation import order_f1_scores

NONE_FEATURES = ("log_p_empty", "p_sum", "p_max", "n_candidates")
# Below this many orders per half, a fitted calibration and its F1 difference are mostly noise.
MIN_ORDERS_PER_HALF = 500
CALIBRATION_FILE = "none_calibration.json"


def order_none_features(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per order_id (ascending) from its candidate rows' `probability`."""
    p = rows["probability"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame(
        {
            "order_id": rows["order_id"].to_numpy(),
            "log_q": np.log1p(-np.clip(p, 0.0, 1.0 - 1e-9)),
            "p": p,
        }
    )
    grouped = frame.groupby("order_id", sort=True)
    return pd.DataFrame(
        {
            "log_p_empty": grouped["log_q"].sum(),
            "p_sum": grouped["p"].sum(),
            "p_max": grouped["p"].max(),
            "n_candidates": grouped["p"].size().astype(np.float64),
        }
    )


def empty_order_labels(rows: pd.DataFrame) -> pd.Series:
    """1 for an order none of whose candidates was bought (its Kaggle truth is 'None'), by order_id."""
    return (rows.groupby("order_id", sort=True)["label"].max() == 0).astype(np.int64)


@dataclass(frozen=True)
class NoneCalibration:
    """A standardised logistic regression on NONE_FEATURES, kept as plain numbers (JSON, no pickle)."""

    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        x = (features[list(self.features)].to_numpy(dtype=np.float64) - self.means) / self.scales
        return 1.0 / (1.0 + np.exp(-(x @ np.asarray(self.coefficients) + self.intercept)))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NoneCalibration:
        return cls(
            features=tuple(data["features"]),
            means=tuple(data["means"]),
            scales=tuple(data["scales"]),
            coefficients=tuple(data["coefficients"]),
            intercept=float(data["intercept"]),
        )


def fit_none_calibration(features: pd.DataFrame, empty: pd.Series) -> NoneCalibration:
    """Fit P(empty basket | NONE_FEATURES); deterministic (lbfgs, no sampling)."""
    x = features[list(NONE_FEATURES)].to_numpy(dtype=np.float64)
    y = empty.reindex(features.index).to_numpy()
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    scales[scales == 0.0] = 1.0
    model = LogisticRegression(C=1.0, max_iter=1000).fit((x - means) / scales, y)
    return NoneCalibration(
        features=NONE_FEATURES,
        means=tuple(float(v) for v in means),
        scales=tuple(float(v) for v in scales),
        coefficients=tuple(float(v) for v in model.coef_[0]),
        intercept=float(model.intercept_[0]),
    )


def none_probabilities(rows: pd.DataFrame, calibration: NoneCalibration | None) -> np.ndarray | None:
    """Per-row P(None) for `select_baskets` (aligned with `rows`), or None for independence."""
    if calibration is None or rows.empty:
        return None
    features = order_none_features(rows)
    per_order = pd.Series(calibration.predict(features), index=features.index)
    return per_order.reindex(rows["order_id"].to_numpy()).to_numpy()


def _order_f1(rows: pd.DataFrame, per_row_none: np.ndarray | None) -> pd.Series:
    selection = select_baskets(
        rows["order_id"].to_numpy(),
        rows["product_id"].to_numpy(),
        rows["probability"].to_numpy(),
        per_row_none,
    )
    chosen = rows.loc[selection.selected, ["order_id", "product_id"]]
    return order_f1_scores(rows, chosen, none_orders=selection.order_ids[selection.include_none])


def _log_loss(probability: np.ndarray, outcome: np.ndarray) -> float:
    p = np.clip(probability, 1e-12, 1.0 - 1e-12)
    return float(-(outcome * np.log(p) + (1 - outcome) * np.log1p(-p)).mean())


@dataclass(frozen=True)
class NoneChoice:
    """Whether baskets use the calibrated P(None), with the held-out half's evidence."""

    use_calibrated: bool
    reason: str
    fit_orders: int
    eval_orders: int
    empty_share: float = float("nan")
    f1_independent: float = float("nan")
    f1_calibrated: float = float("nan")
    f1_difference: float = float("nan")
    f1_difference_se: float = float("nan")
    log_loss_independent: float = float("nan")
    log_loss_calibrated: float = float("nan")
    calibration: NoneCalibration | None = field(default=None)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["calibration"] = self.calibration.as_dict() if self.calibration else None
        return data

    def markdown(self) -> str:
        return (
            "| P(None) | mean F1 (held-out half) | log loss of P(None) |\n| --- | --- | --- |\n"
            f"| independence: prod(1 - p) | {self.f1_independent:.4f} | {self.log_loss_independent:.4f} |\n"
            f"| calibrated | {self.f1_calibrated:.4f} | {self.log_loss_calibrated:.4f} |\n\n"
            f"{'Used' if self.use_calibrated else 'Not used'}: {self.reason}"
        )


def choose_none_probability(
    validation_rows: pd.DataFrame, seed: int, min_orders_per_half: int = MIN_ORDERS_PER_HALF
) -> NoneChoice:
    """Fit on a seeded half of the validation users, judge on the other half (see module doc).
    `validation_rows`: user_id, order_id, product_id, label, probability per candidate."""
    users = np.unique(validation_rows["user_id"].to_numpy())
    chosen = np.random.default_rng(seed).permutation(users)[: users.size // 2]
    in_fit = validation_rows["user_id"].isin(chosen).to_numpy()
    fit_rows, eval_rows = validation_rows[in_fit], validation_rows[~in_fit]
    fit_orders, eval_orders = fit_rows["order_id"].nunique(), eval_rows["order_id"].nunique()
    if min(fit_orders, eval_orders) < min_orders_per_half:
        return NoneChoice(
            False,
            f"too few validation orders to judge a calibration ({fit_orders} and {eval_orders}; "
            f"needs {min_orders_per_half} per half): independence",
            fit_orders,
            eval_orders,
        )
    fit_labels = empty_order_labels(fit_rows)
    if fit_labels.nunique() < 2:
        return NoneChoice(
            False, "every fitting order is alike (all or none empty): independence", fit_orders, eval_orders
        )
    calibration = fit_none_calibration(order_none_features(fit_rows), fit_labels)
    eval_features = order_none_features(eval_rows)
    eval_labels = empty_order_labels(eval_rows).reindex(eval_features.index).to_numpy()
    independent_f1 = _order_f1(eval_rows, None)
    calibrated_f1 = _order_f1(eval_rows, none_probabilities(eval_rows, calibration))
    difference = (calibrated_f1 - independent_f1.reindex(calibrated_f1.index)).to_numpy()
    mean_difference = float(difference.mean())
    se = float(difference.std(ddof=1) / np.sqrt(difference.size)) if difference.size > 1 else float("inf")
    use = mean_difference > 2.0 * se and mean_difference > 0.0
    reason = (
        f"mean F1 {mean_difference:+.4f} on {eval_orders} held-out orders "
        f"({'more' if use else 'not more'} than 2 standard errors, {2.0 * se:.4f})"
    )
    return NoneChoice(
        use_calibrated=use,
        reason=reason,
        fit_orders=fit_orders,
        eval_orders=eval_orders,
        empty_share=float(eval_labels.mean()),
        f1_independent=float(independent_f1.mean()),
        f1_calibrated=float(calibrated_f1.mean()),
        f1_difference=mean_difference,
        f1_difference_se=se,
        log_loss_independent=_log_loss(np.exp(eval_features["log_p_empty"].to_numpy()), eval_labels),
        log_loss_calibrated=_log_loss(calibration.predict(eval_features), eval_labels),
        calibration=calibration,
    )


def write_none_choice(model_dir: Path, choice: NoneChoice) -> Path:
    """The choice (and the calibration, used or not) beside the model, for next_basket to apply."""
    path = Path(model_dir) / CALIBRATION_FILE
    path.write_text(json.dumps(choice.as_dict(), indent=2, sort_keys=True, allow_nan=True))
    return path


def read_none_calibration(model_dir: str | Path) -> NoneCalibration | None:
    """The calibration a model's baskets use, or None (independence; also for models trained before
    the file existed)."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not data.get("use_calibrated") or not data.get("calibration"):
        return None
    return NoneCalibration.from_dict(data["calibration"])


def calibration_fingerprint(calibration: NoneCalibration | None) -> str:
    """Which P(None) baskets were selected with: `independence`, or a digest of the calibration."""
    if calibration is None:
        return "independence"
    text = json.dumps(calibration.as_dict(), sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
