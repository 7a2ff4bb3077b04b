"""Kaggle's metric (mean per-order F1) for the model's baskets and two baselines it must beat.

Input shapes (pandas DataFrames, integer ids, one row per pair):

- candidate rows: `user_id, order_id, product_id, label` (+ `probability` for the model), one row
  per candidate product of each target order; label 1 means the product is in the target order.
  The order's actual basket is its label-1 products, or {'None'} when there are none (Kaggle's
  truth is the reordered products, and every candidate was bought before, so these coincide).
- `history_counts`: `user_id, product_id, n_orders_with_product`, the number of the user's history
  (prior) orders containing the product.
- `last_order_products`: `user_id, product_id`, every product of the user's last history order
  (first purchases included; all of them are candidates, and `reorder_model` finds them by the
  candidates' `up_in_last_1` feature).

Predicted baskets are DataFrames of `order_id, product_id`; an order with no predicted product
predicts 'None', exactly as `baskets.f1_of_basket` treats an empty set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from instarec_assets.ml.baskets import select_baskets

FREQUENCY_MIN_ORDERS = tuple(range(1, 11))
MODEL_LABEL = "model: expected-F1 baskets"
LAST_ORDER_LABEL = "baseline A: repeat the last order (all its products)"


def frequency_label(min_orders: int) -> str:
    return f"baseline B: bought in >= {min_orders} orders"


def _per_order_f1(
    codes: np.ndarray,
    n_orders: int,
    predicted: np.ndarray,
    actual: np.ndarray,
    predicted_none: np.ndarray | None = None,
) -> np.ndarray:
    """F1 per order from (order code, predicted?, actual?) rows, with 'None' on either side when
    that side is empty (or, for predictions, when `predicted_none` says so)."""
    tp = np.bincount(codes, weights=predicted & actual, minlength=n_orders)
    n_predicted = np.bincount(codes, weights=predicted, minlength=n_orders)
    n_actual = np.bincount(codes, weights=actual, minlength=n_orders)
    none_predicted = n_predicted == 0
    if predicted_none is not None:
        none_predicted |= predicted_none
    none_actual = n_actual == 0
    tp += none_predicted & none_actual
    return 2.0 * tp / (n_predicted + none_predicted + n_actual + none_actual)


@dataclass(frozen=True)
class _Pairs:
    """The union of actual and predicted (order, product) pairs of the orders in `orders`, as
    arrays: each pair's order position, whether it is actual and predicted, and `extra`, a column
    of the predictions (0 where the pair was not predicted)."""

    orders: pd.Index
    codes: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray
    extra: np.ndarray | None


def _pairs(rows: pd.DataFrame, predicted: pd.DataFrame, extra: str | None = None) -> _Pairs:
    """Pairs are joined on one int64 key, order position x product id span, which is several
    times faster than a two-column pandas merge at millions of rows."""
    orders = pd.Index(pd.unique(rows["order_id"]), name="order_id")
    positives = rows.loc[rows["label"] == 1]
    positive_codes = orders.get_indexer(positives["order_id"])
    guess_codes = orders.get_indexer(predicted["order_id"])
    known = guess_codes >= 0
    positive_products = positives["product_id"].to_numpy(dtype=np.int64)
    guess_products = predicted["product_id"].to_numpy(dtype=np.int64)[known]
    span = int(max(positive_products.max(initial=0), guess_products.max(initial=0))) + 1
    keys = np.concatenate(
        (
            positive_codes * span + positive_products,
            guess_codes[known].astype(np.int64) * span + guess_products,
        )
    )
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    actual = np.zeros(unique_keys.size, dtype=bool)
    actual[inverse[: positive_products.size]] = True
    is_predicted = np.zeros(unique_keys.size, dtype=bool)
    is_predicted[inverse[positive_products.size :]] = True
    extra_values = None
    if extra is not None:
        extra_values = np.zeros(unique_keys.size)
        extra_values[inverse[positive_products.size :]] = predicted[extra].to_numpy()[known]
    return _Pairs(orders, unique_keys // span, actual, is_predicted, extra_values)


def order_f1_scores(
    rows: pd.DataFrame, predicted: pd.DataFrame, none_orders: Iterable[int] | None = None
) -> pd.Series:
    """Kaggle F1 of every order in `rows` (candidate rows with labels) for the `predicted` baskets;
    `none_orders` add 'None' to those orders' predictions ("None 24852")."""
    pairs = _pairs(rows, predicted)
    predicted_none = None if none_orders is None else pairs.orders.isin(list(none_orders))
    f1 = _per_order_f1(pairs.codes, len(pairs.orders), pairs.predicted, pairs.actual, predicted_none)
    return pd.Series(f1, index=pairs.orders, name="f1")


def _target_orders(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[["user_id", "order_id"]].drop_duplicates()


def last_order_baseline(rows: pd.DataFrame, last_order_products: pd.DataFrame) -> pd.DataFrame:
    """Baseline A: each target order repeats the user's last history order, every product of it
    (not only the products that were reorders in that order)."""
    return _target_orders(rows).merge(last_order_products[["user_id", "product_id"]], on="user_id")[
        ["order_id", "product_id"]
    ]


def frequency_baseline(rows: pd.DataFrame, history_counts: pd.DataFrame, min_orders: int) -> pd.DataFrame:
    """Baseline B: the products in at least `min_orders` of the user's history orders."""
    frequent = history_counts.loc[
        history_counts["n_orders_with_product"] >= min_orders, ["user_id", "product_id"]
    ]
    return _target_orders(rows).merge(frequent, on="user_id")[["order_id", "product_id"]]


def tune_frequency_baseline(
    rows: pd.DataFrame, history_counts: pd.DataFrame, candidates: Iterable[int] = FREQUENCY_MIN_ORDERS
) -> tuple[int, dict[int, float]]:
    """The `min_orders` maximising mean F1 on `rows` (meant to be TRAINING users) and the mean F1
    of every candidate; ties go to the smallest. One merge, then one bincount per candidate."""
    history = _target_orders(rows).merge(
        history_counts[["user_id", "product_id", "n_orders_with_product"]], on="user_id"
    )
    pairs = _pairs(rows, history, extra="n_orders_with_product")
    scores = {
        int(r): float(_per_order_f1(pairs.codes, len(pairs.orders), pairs.extra >= r, pairs.actual).mean())
        for r in candidates
    }
    best = max(scores, key=lambda r: (scores[r], -r))
    return best, scores


def model_order_f1(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per-order F1 of the expected-F1-optimal baskets chosen from `probability`, and the
    optimiser's own expected F1 per order (close to the first on average if well calibrated)."""
    selection = select_baskets(
        rows["order_id"].to_numpy(), rows["product_id"].to_numpy(), rows["probability"].to_numpy()
    )
    chosen = rows.loc[selection.selected, ["order_id", "product_id"]]
    f1 = order_f1_scores(rows, chosen, none_orders=selection.order_ids[selection.include_none])
    expected = pd.Series(selection.expected_f1, index=pd.Index(selection.order_ids, name="order_id"))
    return f1, expected.reindex(f1.index)


@dataclass(frozen=True)
class BasketEvaluation:
    """Mean per-order F1 on validation orders for the model and both baselines."""

    n_orders: int
    model_f1: float
    model_expected_f1: float
    last_order_f1: float
    frequency_f1: float
    frequency_min_orders: int
    frequency_train_f1: dict[int, float]

    def as_dict(self) -> dict:
        return asdict(self)

    def as_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "method": [MODEL_LABEL, LAST_ORDER_LABEL, frequency_label(self.frequency_min_orders)],
                "mean_f1": [self.model_f1, self.last_order_f1, self.frequency_f1],
            }
        )


@dataclass(frozen=True)
class BaselineVerdict:
    """Whether the model beats both baselines, for the blocking `beats_baselines` asset check."""

    passed: bool
    not_beaten: tuple[str, ...]  # labels of the baselines the model does not beat
    description: str


def compare_with_baselines(evaluation: BasketEvaluation) -> BaselineVerdict:
    """The model's mean F1 must be strictly above each baseline's (a tie or NaN does not beat it):
    a model no better than repeating the last order is not worth serving."""
    baselines = {
        LAST_ORDER_LABEL: evaluation.last_order_f1,
        frequency_label(evaluation.frequency_min_orders): evaluation.frequency_f1,
    }
    not_beaten = tuple(label for label, f1 in baselines.items() if not evaluation.model_f1 > f1)
    scores = " and ".join(f"{label} ({f1:.4f})" for label, f1 in baselines.items())
    if not_beaten:
        missed = " and ".join(f"{label} ({baselines[label]:.4f})" for label in not_beaten)
        description = f"model mean F1 {evaluation.model_f1:.4f} does not beat {missed}"
    else:
        description = f"model mean F1 {evaluation.model_f1:.4f} beats {scores}"
    return BaselineVerdict(passed=not not_beaten, not_beaten=not_beaten, description=description)


def evaluate_baskets(
    validation_rows: pd.DataFrame,
    training_rows: pd.DataFrame,
    history_counts: pd.DataFrame,
    last_order_products: pd.DataFrame,
    frequency_candidates: Iterable[int] = FREQUENCY_MIN_ORDERS,
) -> BasketEvaluation:
    """Model vs baselines on validation users; baseline B's threshold is tuned on training users."""
    model_f1, expected_f1 = model_order_f1(validation_rows)
    best_r, train_scores = tune_frequency_baseline(training_rows, history_counts, frequency_candidates)
    last = order_f1_scores(validation_rows, last_order_baseline(validation_rows, last_order_products))
    frequent = order_f1_scores(validation_rows, frequency_baseline(validation_rows, history_counts, best_r))
    return BasketEvaluation(
        n_orders=len(model_f1),
        model_f1=float(model_f1.mean()),
        model_expected_f1=float(expected_f1.mean()),
        last_order_f1=float(last.mean()),
        frequency_f1=float(frequent.mean()),
        frequency_min_orders=best_r,
        frequency_train_f1=train_scores,
    )
