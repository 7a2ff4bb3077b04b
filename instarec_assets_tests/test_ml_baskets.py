"""The expected-F1 basket optimiser against brute force, Kaggle's F1 conventions and the output format."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from instarec_assets.ml.baskets import (
    NONE,
    baskets_for_orders,
    expected_f1_basket,
    expected_f1_table,
    f1_of_basket,
    select_baskets,
)


def _truths(p: np.ndarray) -> list[tuple[set, float]]:
    """Every possible actual basket with its probability under independence."""
    out = []
    for outcome in itertools.product((False, True), repeat=len(p)):
        probability = float(np.prod([pi if hit else 1 - pi for pi, hit in zip(p, outcome, strict=True)]))
        out.append(({i for i, hit in enumerate(outcome) if hit}, probability))
    return out


def _expected_f1(prediction: set, truths: list[tuple[set, float]]) -> float:
    return sum(probability * f1_of_basket(prediction, actual) for actual, probability in truths)


def _brute_force(p: np.ndarray) -> dict[tuple[frozenset, bool], float]:
    """Expected F1 of every non-empty prediction: any subset of products, with or without 'None'."""
    truths = _truths(p)
    values = {}
    for size in range(len(p) + 1):
        for subset in itertools.combinations(range(len(p)), size):
            for with_none in (False, True):
                if subset or with_none:
                    prediction = set(subset) | ({NONE} if with_none else set())
                    values[(frozenset(subset), with_none)] = _expected_f1(prediction, truths)
    return values


@pytest.mark.parametrize("seed", range(40))
def test_optimiser_matches_brute_force_over_all_subsets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 8))
    p = rng.random(n) ** rng.choice([0.3, 1.0, 4.0])
    values = _brute_force(p)
    basket = expected_f1_basket(p, np.arange(n))
    best = max(values.values())
    assert basket.expected_f1 == pytest.approx(best, abs=1e-12)
    assert values[(frozenset(basket.product_ids), basket.include_none)] == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_table_is_exact_for_every_prefix_with_and_without_none(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    p = np.sort(rng.random(6))[::-1]
    truths = _truths(p)
    without_none, with_none = expected_f1_table(p[None, :])
    for k in range(len(p) + 1):
        top = set(range(k))
        assert with_none[0, k] == pytest.approx(_expected_f1(top | {NONE}, truths), abs=1e-12)
        if k:
            assert without_none[0, k] == pytest.approx(_expected_f1(top, truths), abs=1e-12)
    assert without_none[0, 0] == 0.0


def test_known_cases() -> None:
    sure = expected_f1_basket(np.array([0.01, 0.99, 0.02]), np.array([8, 7, 9]))
    assert (sure.product_ids, sure.include_none, sure.as_kaggle()) == ((7,), False, "7")
    tiny = expected_f1_basket(np.full(10, 0.001), np.arange(10))
    assert (tiny.product_ids, tiny.include_none, tiny.as_kaggle()) == ((), True, "None")
    hedge = expected_f1_basket(np.array([0.5]), np.array([24852]))
    assert hedge.as_kaggle() == "None 24852"
    assert hedge.expected_f1 == pytest.approx(2 / 3)
    assert hedge.as_set() == {NONE, 24852}
    empty = expected_f1_basket(np.array([]), np.array([], dtype=np.int64))
    assert (empty.as_kaggle(), empty.expected_f1) == ("None", 1.0)


def test_f1_of_basket_follows_kaggle_conventions() -> None:
    assert f1_of_basket({NONE}, {NONE}) == 1.0
    assert f1_of_basket({NONE}, set()) == 1.0
    assert f1_of_basket(set(), set()) == 1.0
    assert f1_of_basket({1}, {NONE}) == 0.0
    assert f1_of_basket({NONE}, {1}) == 0.0
    assert f1_of_basket({1, 2}, {2, 3}) == 0.5
    assert f1_of_basket({NONE, 1}, {1}) == pytest.approx(2 / 3)
    assert f1_of_basket({NONE, 1}, {NONE}) == pytest.approx(2 / 3)


def test_many_orders_in_any_row_order_match_the_single_order_optimiser() -> None:
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 45, size=300)
    orders = np.repeat(np.arange(1000, 1300), sizes)
    products = rng.integers(1, 50_000, size=orders.size)
    p = rng.beta(0.5, 3.0, size=orders.size)
    shuffle = rng.permutation(orders.size)
    orders, products, p = orders[shuffle], products[shuffle], p[shuffle]

    selection = select_baskets(orders, products, p)
    strings = baskets_for_orders(orders, products, p)

    assert selection.order_ids.tolist() == list(range(1000, 1300))
    assert list(strings) == list(range(1000, 1300))
    for i, order in enumerate(selection.order_ids):
        rows = orders == order
        single = expected_f1_basket(p[rows], products[rows])
        assert strings[order] == single.as_kaggle()
        assert selection.expected_f1[i] == pytest.approx(single.expected_f1, abs=1e-12)
        assert bool(selection.include_none[i]) == single.include_none
        assert set(products[rows & selection.selected]) == set(single.product_ids)


def test_basket_strings_list_products_most_probable_first() -> None:
    strings = baskets_for_orders(
        np.array([5, 5, 5, 6, 6]), np.array([11, 12, 13, 21, 22]), np.array([0.9, 0.95, 0.001, 0.01, 0.02])
    )
    assert strings == {5: "12 11", 6: "None"}


def test_rejects_probabilities_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        select_baskets(np.array([1, 1]), np.array([1, 2]), np.array([0.5, 1.5]))


def _mixture_truths(p: np.ndarray, p_none: float) -> list[tuple[set, float]]:
    """Empty with probability p_none, else the independent model conditioned on a non-empty basket."""
    independent = _truths(p)
    empty = independent[0][1]  # the all-False outcome comes first
    out = [(set(), p_none)]
    for actual, probability in independent[1:]:
        out.append((actual, (1.0 - p_none) * probability / (1.0 - empty)))
    return out


@pytest.mark.parametrize("seed", range(25))
def test_given_none_probability_is_exact_for_the_mixture_and_optimal(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    n = int(rng.integers(1, 7))
    p = np.sort(rng.random(n) ** rng.choice([0.5, 1.0, 3.0]))[::-1]
    p_none = float(rng.choice([0.0, 0.05, 0.4, 0.9, 1.0, rng.random()]))
    truths = _mixture_truths(p, p_none)
    without_none, with_none = expected_f1_table(p[None, :], np.array([p_none]))
    for k in range(n + 1):
        top = set(range(k))
        assert with_none[0, k] == pytest.approx(_expected_f1(top | {NONE}, truths), abs=1e-12)
        if k:
            assert without_none[0, k] == pytest.approx(_expected_f1(top, truths), abs=1e-12)
    best = max(
        _expected_f1(set(subset) | ({NONE} if none else set()), truths)
        for size in range(n + 1)
        for subset in itertools.combinations(range(n), size)
        for none in (False, True)
        if subset or none
    )
    basket = expected_f1_basket(p, np.arange(n), p_none=p_none)
    assert basket.expected_f1 == pytest.approx(best, abs=1e-12)


def test_independent_none_probability_gives_back_the_default_baskets() -> None:
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 30, size=200)
    orders = np.repeat(np.arange(200), sizes)
    products = rng.integers(1, 5_000, size=orders.size)
    p = rng.beta(0.5, 3.0, size=orders.size)
    independent = pd.Series(1.0 - p).groupby(orders).prod().to_numpy()[orders]
    default = select_baskets(orders, products, p)
    given = select_baskets(orders, products, p, none_probabilities=independent)
    assert np.allclose(given.expected_f1, default.expected_f1, atol=1e-12)
    assert np.array_equal(given.selected, default.selected)
    assert np.array_equal(given.include_none, default.include_none)


def test_a_likely_empty_basket_predicts_none_and_an_unlikely_one_does_not() -> None:
    # Two products at 0.3: independence puts P(None) at 0.49 and hedges with "None 1 2"-style picks.
    p, ids = np.array([0.3, 0.3]), np.array([1, 2])
    likely_empty = expected_f1_basket(p, ids, p_none=0.95)
    never_empty = expected_f1_basket(p, ids, p_none=0.0)
    assert likely_empty.as_kaggle() == "None"
    assert likely_empty.expected_f1 == pytest.approx(0.95)
    assert not never_empty.include_none
    assert never_empty.product_ids == (1, 2)


def test_none_probabilities_must_be_per_row_constant_per_order_and_in_range() -> None:
    orders, products, p = np.array([1, 1, 2]), np.array([1, 2, 3]), np.array([0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="same for every row of an order"):
        select_baskets(orders, products, p, none_probabilities=np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="aligned with the rows"):
        select_baskets(orders, products, p, none_probabilities=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"p_none must lie in \[0, 1\]"):
        select_baskets(orders, products, p, none_probabilities=np.array([0.1, 0.1, 1.2]))
