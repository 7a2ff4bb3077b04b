"""Next-basket selection that maximises the expected Kaggle F1 of each order.

Given independent reorder probabilities p_1 >= ... >= p_n for an order's candidate products, the
prediction that maximises expected F1 is always "the k most probable products", optionally with
'None' (the Kaggle token for "nothing is reordered"): swapping a chosen product for a more probable
unchosen one never lowers expected F1 (Lewis 1995; Nan Ye et al. 2012, "Optimizing F-measures: a
tale of two approaches", Theorem 3), and the 'None' term depends only on the basket size. So the
optimum is found exactly by evaluating the expected F1 of all 2(n + 1) candidates "top k, with or
without None".

Each expected F1 is computed exactly with the O(n^2) dynamic programme Faron published for the
Instacart competition (after Ye et al.): the distribution of true positives among the top k by a
forward Poisson-binomial recursion, and E[1 / (i + positives after the top k)] by a backward one.
The recursions run vectorised over many orders at once (orders grouped by candidate count and padded
with zero probabilities, which never change the optimum), so no Python loop runs per order.

Independence makes P(None) = prod(1 - p_i), which real baskets contradict (what a shopper reorders is
correlated). A separately estimated P(None) (`ml/none_probability.py`) enters as a mixture: the basket
is empty with probability p_none, else drawn from the independent model conditioned on not being
empty. That keeps every expected F1 exact under a well-defined distribution, and p_none = prod(1 - p_i)
gives back the independent case.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

NONE = "None"

_TABLE_BYTES = 16 * 1024 * 1024  # per batch of orders; small batches stay in cache


def f1_of_basket(predicted: Collection, actual: Collection) -> float:
    """Kaggle's per-order F1: 2|P & A| / (|P| + |A|). An empty set means 'None', the token Kaggle
    uses for "no reordered products", so predicting {'None'} for an order without reorders scores 1."""
    predicted_set = set(predicted) or {NONE}
    actual_set = set(actual) or {NONE}
    return 2.0 * len(predicted_set & actual_set) / (len(predicted_set) + len(actual_set))


@dataclass(frozen=True)
class Basket:
    """One order's chosen basket: products most probable first, and whether 'None' is predicted."""

    product_ids: tuple[int, ...]
    include_none: bool
    expected_f1: float

    def as_set(self) -> set:
        return set(self.product_ids) | ({NONE} if self.include_none else set())

    def as_kaggle(self) -> str:
        return _kaggle_string(self.include_none, self.product_ids)


@dataclass(frozen=True)
class BasketSelection:
    """Baskets for many orders. Per-order arrays are aligned with `order_ids` (ascending);
    `selected` is aligned with the input rows and marks the chosen products."""

    order_ids: np.ndarray
    n_products: np.ndarray
    include_none: np.ndarray
    expected_f1: np.ndarray
    selected: np.ndarray
    _sorted_products: np.ndarray
    _starts: np.ndarray

    def kaggle_strings(self) -> dict[int, str]:
        """{order_id: "24852 13176" | "None" | "None 24852"}, products most probable first."""
        products = self._sorted_products.tolist()
        out: dict[int, str] = {}
        for order_id, start, k, none in zip(
            self.order_ids.tolist(),
            self._starts.tolist(),
            self.n_products.tolist(),
            self.include_none.tolist(),
            strict=True,
        ):
            out[order_id] = _kaggle_string(none, products[start : start + k])
        return out


def _kaggle_string(include_none: bool, product_ids) -> str:
    tokens = ([NONE] if include_none else []) + [str(p) for p in product_ids]
    return " ".join(tokens)


def expected_f1_table(
    probabilities: np.ndarray, p_none: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact expected F1 of predicting the top k products, k = 0..n, without and with 'None'.

    `probabilities` is (orders, n), each row sorted descending (pad with zeros). Returns two
    (orders, n + 1) arrays. Predicting nothing at all (k = 0 without 'None') scores 0. Orders run
    along the last axis inside, so every step works on contiguous memory. `p_none` (orders,), when
    given, is each order's probability of an empty basket (the mixture in the module docstring)."""
    p = np.ascontiguousarray(np.asarray(probabilities, dtype=np.float64).T)
    n, m = p.shape
    q = 1.0 - p
    counts = np.zeros((n + 1, n + 1, m))  # counts[k, a] = P(a positives among the top k)
    counts[0, 0] = 1.0
    for k in range(1, n + 1):
        np.multiply(counts[k - 1, : k + 1], q[k - 1], out=counts[k, : k + 1])
        counts[k, 1 : k + 1] += counts[k - 1, :k] * p[k - 1]
    empty = counts[n, 0]  # P(no product is bought) under independence
    inverse = np.zeros((2 * n + 2, m))  # inverse[i] = E[1 / (i + positives after the top k)]
    inverse[1:] = 1.0 / np.arange(1, 2 * n + 2)[:, None]
    twice_a = 2.0 * np.arange(n + 1)[:, None]
    without_none = np.empty((n + 1, m))
    with_none = np.empty((n + 1, m))
    for k in range(n, -1, -1):
        weighted = counts[k, : k + 1] * twice_a[: k + 1]
        without_none[k] = np.einsum("am,am->m", weighted, inverse[k : 2 * k + 1])
        with_none[k] = np.einsum("am,am->m", weighted, inverse[k + 1 : 2 * k + 2]) + 2.0 * empty / (k + 2)
        if k > 0:
            inverse[1 : 2 * k] = q[k - 1] * inverse[1 : 2 * k] + p[k - 1] * inverse[2 : 2 * k + 1]
    if p_none is not None:
        given = np.asarray(p_none, dtype=np.float64).reshape(-1)
        if given.shape != (m,):
            raise ValueError(f"p_none must hold one probability per order ({m}), got shape {given.shape}")
        if given.size and (np.isnan(given).any() or given.min() < 0.0 or given.max() > 1.0):
            raise ValueError("p_none must lie in [0, 1]")
        # E[F1 | basket not empty] under independence, then mixed with the given empty-basket mass.
        none_hit = 2.0 / (np.arange(n + 1)[:, None] + 2.0)
        non_empty = 1.0 - empty
        scale = np.divide(1.0 - given, non_empty, out=np.zeros(m), where=non_empty > 1e-12)
        without_none = without_none * scale
        with_none = (with_none - empty * none_hit) * scale + given * none_hit
    return without_none.T, with_none.T


def _best_choice(
    sorted_probabilities: np.ndarray, p_none: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k, include_none, expected F1) per row of a descending-sorted, zero-padded matrix."""
    without_none, with_none = expected_f1_table(sorted_probabilities, p_none)
    m = sorted_probabilities.shape[0]
    rows = np.arange(m)
    k_with = with_none.argmax(axis=1)
    best_with = with_none[rows, k_with]
    if without_none.shape[1] > 1:
        k_without = without_none[:, 1:].argmax(axis=1) + 1
        best_without = without_none[rows, k_without]
    else:
        k_without = np.zeros(m, dtype=np.int64)
        best_without = np.full(m, -np.inf)
    use_none = best_with > best_without
    return (
        np.where(use_none, k_with, k_without),
        use_none,
        np.where(use_none, best_with, best_without),
    )


def expected_f1_basket(
    probabilities: np.ndarray, product_ids: np.ndarray, p_none: float | None = None
) -> Basket:
    """The expected-F1-optimal basket for one order's candidates (`p_none`: see the module doc)."""
    p = np.asarray(probabilities, dtype=np.float64)
    ids = np.asarray(product_ids)
    if p.shape != ids.shape or p.ndim != 1:
        raise ValueError("probabilities and product_ids must be 1-d arrays of the same length")
    order = np.argsort(-p, kind="stable")
    k, none, value = _best_choice(p[order][None, :], None if p_none is None else np.array([p_none]))
    return Basket(tuple(ids[order][: int(k[0])].tolist()), bool(none[0]), float(value[0]))


def _padded_size(n: int) -> int:
    """Round candidate counts up to at most 1/8 more, so orders share a few vectorised groups."""
    if n <= 8:
        return n
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def select_baskets(
    order_ids: np.ndarray,
    product_ids: np.ndarray,
    probabilities: np.ndarray,
    none_probabilities: np.ndarray | None = None,
) -> BasketSelection:
    """Expected-F1-optimal baskets for many orders, given one row per (order, candidate product).
    `none_probabilities`, aligned with the rows and constant within an order, is each order's
    probability of an empty basket; None means independence (prod(1 - p))."""
    orders = np.asarray(order_ids)
    products = np.asarray(product_ids)
    p = np.asarray(probabilities, dtype=np.float64)
    if not (orders.shape == products.shape == p.shape) or orders.ndim != 1:
        raise ValueError("order_ids, product_ids and probabilities must be 1-d arrays of the same length")
    if p.size and (np.isnan(p).any() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    # Grouped by order, then product: equal probabilities rank the smaller product first, whatever the
    # rows' input order (a multi-threaded scan gives none).
    grouped = np.lexsort((products, orders))
    sorted_orders = orders[grouped]
    boundary = np.flatnonzero(sorted_orders[1:] != sorted_orders[:-1]) + 1
    starts = np.concatenate(([0], boundary)) if orders.size else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.append(starts, orders.size))
    order_none = None
    if none_probabilities is not None:
        per_row = np.asarray(none_probabilities, dtype=np.float64)
        if per_row.shape != orders.shape:
            raise ValueError("none_probabilities must be aligned with the rows (one value per row)")
        order_none = per_row[grouped][starts]
        if not np.array_equal(np.repeat(order_none, sizes), per_row[grouped], equal_nan=True):
            raise ValueError("none_probabilities must be the same for every row of an order")
    n_groups = starts.size
    row_order = grouped.copy()  # becomes: grouped by order, most probable first within each order
    chosen_k = np.zeros(n_groups, dtype=np.int64)
    include_none = np.zeros(n_groups, dtype=bool)
    expected = np.zeros(n_groups)
    padded = np.array([_padded_size(int(s)) for s in sizes], dtype=np.int64)
    for width in np.unique(padded).tolist():
        groups = np.flatnonzero(padded == width)
        batch = max(1, _TABLE_BYTES // (8 * (width + 1) ** 2))
        offsets = np.arange(width)
        for lo in range(0, groups.size, batch):
            part = groups[lo : lo + batch]
            valid = offsets[None, :] < sizes[part, None]
            source = np.where(valid, starts[part, None] + offsets[None, :], 0)
            matrix = np.zeros((part.size, width))
            matrix[valid] = p[grouped[source[valid]]]
            descending = np.argsort(-matrix, axis=1, kind="stable")  # padding stays behind real zeros
            matrix = np.take_along_axis(matrix, descending, axis=1)
            row_order[source[valid]] = grouped[np.take_along_axis(source, descending, axis=1)[valid]]
            k, none, value = _best_choice(matrix, None if order_none is None else order_none[part])
            chosen_k[part], include_none[part], expected[part] = k, none, value
    rank = np.arange(orders.size) - np.repeat(starts, sizes)
    selected = np.empty(orders.size, dtype=bool)
    selected[row_order] = rank < np.repeat(chosen_k, sizes)
    return BasketSelection(
        order_ids=sorted_orders[starts],
        n_products=chosen_k,
        include_none=include_none,
        expected_f1=expected,
        selected=selected,
        _sorted_products=products[row_order],
        _starts=starts,
    )


def baskets_for_orders(
    order_ids: np.ndarray, product_ids: np.ndarray, probabilities: np.ndarray
) -> dict[int, str]:
    """The Kaggle submission string per order: "24852 13176", "None" or "None 24852"."""
    return select_baskets(order_ids, product_ids, probabilities).kaggle_strings()
