"""Mean per-order F1 for the model and both baselines on a hand-made example worked out on paper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instarec_assets.ml.baskets import f1_of_basket
from instarec_assets.ml.evaluation import (
    LAST_ORDER_LABEL,
    BasketEvaluation,
    compare_with_baselines,
    evaluate_baskets,
    frequency_baseline,
    last_order_baseline,
    order_f1_scores,
    tune_frequency_baseline,
)


def _rows(records: list[tuple[int, int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=["user_id", "order_id", "product_id", "label"])


# Training users 1-3. Actual baskets: order 101 {1, 2}, order 102 None, order 103 {7}.
TRAINING = _rows(
    [
        *[(1, 101, 1, 1), (1, 101, 2, 1), (1, 101, 3, 0)],
        *[(2, 102, 4, 0), (2, 102, 5, 0)],
        *[(3, 103, 6, 0), (3, 103, 7, 1), (3, 103, 8, 0)],
    ]
)
# Validation users 4-6. Actual baskets: order 201 {10}, order 202 {14}, order 203 None.
VALIDATION = _rows(
    [
        *[(4, 201, 10, 1), (4, 201, 11, 0), (4, 201, 12, 0)],
        *[(5, 202, 13, 0), (5, 202, 14, 1)],
        *[(6, 203, 15, 0), (6, 203, 16, 0)],
    ]
)
HISTORY = pd.DataFrame(
    [
        *[(1, 1, 5), (1, 2, 3), (1, 3, 1), (2, 4, 2), (2, 5, 1), (3, 6, 4), (3, 7, 2), (3, 8, 1)],
        *[(4, 10, 3), (4, 11, 4), (4, 12, 1), (5, 13, 1), (5, 14, 2), (6, 15, 1), (6, 16, 1)],
    ],
    columns=["user_id", "product_id", "n_orders_with_product"],
)
LAST_ORDER = pd.DataFrame(
    [(1, 1), (1, 3), (3, 7), (3, 8), (4, 11), (5, 13), (5, 14)], columns=["user_id", "product_id"]
)


def test_last_order_baseline_by_hand() -> None:
    scores = order_f1_scores(TRAINING, last_order_baseline(TRAINING, LAST_ORDER))
    # 101: {1,3} vs {1,2} = 1/2; 102: None vs None = 1; 103: {7,8} vs {7} = 2/3
    assert scores.to_dict() == pytest.approx({101: 0.5, 102: 1.0, 103: 2 / 3})
    assert scores.mean() == pytest.approx(13 / 18)


def test_frequency_baseline_tuned_on_training_users() -> None:
    best, scores = tune_frequency_baseline(TRAINING, HISTORY)
    # r=1: .8, 0, .5; r=2: 1, 0, 2/3; r=3: 1, 1, 0; r=4,5: 2/3, 1, 0; r>=6: 0, 1, 0
    expected = {1: 1.3 / 3, 2: 5 / 9, 3: 2 / 3, 4: 5 / 9, 5: 5 / 9} | {r: 1 / 3 for r in range(6, 11)}
    assert scores == pytest.approx(expected)
    assert best == 3
    for r, value in expected.items():
        assert order_f1_scores(TRAINING, frequency_baseline(TRAINING, HISTORY, r)).mean() == pytest.approx(
            value
        )


def test_none_can_be_predicted_alongside_products() -> None:
    predicted = pd.DataFrame({"order_id": [201, 202], "product_id": [10, 14]})
    scores = order_f1_scores(VALIDATION, predicted, none_orders=[202, 203])
    assert scores.to_dict() == pytest.approx({201: 1.0, 202: 2 / 3, 203: 1.0})


def test_evaluation_of_model_and_baselines_by_hand() -> None:
    validation = VALIDATION.assign(probability=[0.95, 0.02, 0.01, 0.01, 0.95, 0.01, 0.02])
    result = evaluate_baskets(validation, TRAINING, HISTORY, LAST_ORDER)
    assert result.n_orders == 3
    assert result.model_f1 == 1.0  # {10}, {14}, None
    assert 0.8 < result.model_expected_f1 < 1.0
    assert result.frequency_min_orders == 3
    assert result.frequency_f1 == pytest.approx((2 / 3 + 0 + 1) / 3)  # {10,11}, None, None
    assert result.last_order_f1 == pytest.approx((0 + 2 / 3 + 1) / 3)  # {11}, {13,14}, None
    table = result.as_table()
    assert table["mean_f1"].tolist() == pytest.approx([1.0, 5 / 9, 5 / 9])


def test_vectorised_scores_agree_with_f1_of_basket() -> None:
    rng = np.random.default_rng(4)
    rows = _rows(
        [(order, order, product, int(rng.random() < 0.3)) for order in range(60) for product in range(8)]
    )
    predicted = rows.loc[rng.random(len(rows)) < 0.4, ["order_id", "product_id"]]
    extra = pd.DataFrame({"order_id": [0, 1], "product_id": [99, 98]})  # products outside the candidates
    predicted = pd.concat([predicted, extra])
    none_orders = [3, 4, 5]
    scores = order_f1_scores(rows, predicted, none_orders=none_orders)
    for order, group in rows.groupby("order_id"):
        actual = set(group.loc[group["label"] == 1, "product_id"])
        guess = set(predicted.loc[predicted["order_id"] == order, "product_id"])
        guess |= {"None"} if order in none_orders else set()
        assert scores[order] == pytest.approx(f1_of_basket(guess, actual))


def _evaluation(model_f1: float, last_order_f1: float, frequency_f1: float) -> BasketEvaluation:
    return BasketEvaluation(
        n_orders=3,
        model_f1=model_f1,
        model_expected_f1=model_f1,
        last_order_f1=last_order_f1,
        frequency_f1=frequency_f1,
        frequency_min_orders=2,
        frequency_train_f1={2: frequency_f1},
    )


def test_baseline_a_is_labelled_as_repeating_the_whole_last_order() -> None:
    assert _evaluation(0.5, 0.4, 0.3).as_table()["method"].tolist() == [
        "model: expected-F1 baskets",
        "baseline A: repeat the last order (all its products)",
        "baseline B: bought in >= 2 orders",
    ]


def test_a_model_worse_than_a_baseline_fails_the_comparison_naming_that_baseline() -> None:
    # the model's baskets from inverted probabilities: {11, 12}, {13}, {15, 16} all wrong -> F1 0
    validation = VALIDATION.assign(probability=[0.01, 0.95, 0.9, 0.95, 0.01, 0.9, 0.9])
    evaluation = evaluate_baskets(validation, TRAINING, HISTORY, LAST_ORDER)
    assert evaluation.model_f1 < evaluation.last_order_f1 == pytest.approx(5 / 9)

    verdict = compare_with_baselines(evaluation)

    assert not verdict.passed
    assert verdict.not_beaten == (LAST_ORDER_LABEL, "baseline B: bought in >= 3 orders")
    assert verdict.description == (
        f"model mean F1 {evaluation.model_f1:.4f} does not beat "
        "baseline A: repeat the last order (all its products) (0.5556) and baseline B: bought in >= 3 orders (0.5556)"
    )


@pytest.mark.parametrize(
    ("scores", "not_beaten"),
    [
        ((0.40, 0.41, 0.30), (LAST_ORDER_LABEL,)),
        ((0.40, 0.30, 0.40), ("baseline B: bought in >= 2 orders",)),  # a tie does not beat it
        ((float("nan"), 0.30, 0.20), (LAST_ORDER_LABEL, "baseline B: bought in >= 2 orders")),
        ((0.42, 0.41, 0.30), ()),
    ],
)
def test_compare_with_baselines_needs_the_model_strictly_above_each(
    scores: tuple[float, float, float], not_beaten: tuple[str, ...]
) -> None:
    verdict = compare_with_baselines(_evaluation(*scores))
    assert verdict.passed is (not not_beaten)
    assert verdict.not_beaten == not_beaten
    for label in not_beaten:
        assert label in verdict.description
    if not not_beaten:
        assert verdict.description.startswith("model mean F1 0.4200 beats baseline A")
