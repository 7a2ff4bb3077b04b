"""Per-product popularity and repeatability, calibrated to the real dataset's published figures.

Popularity is what exploring shoppers pick from; repeatability is how likely a product is to become
a staple that a shopper keeps rebuying. Both come from a fixed seed keyed by product_id, so the same
products are best sellers whatever the generation seed, as in a real store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import Catalog

TRAIT_SEED = 2017
PRODUCT_SPREAD = 1.1
REPEAT_SPREAD = 0.8
ORGANIC_BOOST = 1.8

# Share of all order lines and reorder rate per department in the real prior orders.
DEPARTMENT_TARGETS: dict[int, tuple[float, float]] = {
    1: (0.0690, 0.542),
    2: (0.0011, 0.407),
    3: (0.0362, 0.628),
    4: (0.2923, 0.650),
    5: (0.0048, 0.570),
    6: (0.0083, 0.369),
    7: (0.0829, 0.653),
    8: (0.0030, 0.601),
    9: (0.0267, 0.461),
    10: (0.0011, 0.577),
    11: (0.0138, 0.321),
    12: (0.0218, 0.568),
    13: (0.0578, 0.347),
    14: (0.0217, 0.561),
    15: (0.0329, 0.457),
    16: (0.1669, 0.670),
    17: (0.0228, 0.402),
    18: (0.0131, 0.578),
    19: (0.0889, 0.574),
    20: (0.0324, 0.608),
    21: (0.0021, 0.387),
}

# Share of all order lines of the busiest aisles; the rest of a department is split by assortment size.
AISLE_TARGETS: dict[int, float] = {
    24: 0.112,
    83: 0.105,
    123: 0.054,
    120: 0.045,
    21: 0.030,
    84: 0.027,
    115: 0.026,
    107: 0.022,
    91: 0.020,
    112: 0.018,
    31: 0.018,
    116: 0.016,
    37: 0.015,
    78: 0.014,
    3: 0.014,
    86: 0.014,
    96: 0.012,
    38: 0.012,
    92: 0.012,
    16: 0.012,
}

# Share of all order lines of the real best sellers (bananas first).
ANCHOR_TARGETS: dict[int, float] = {
    24852: 0.0146,
    13176: 0.0117,
    21137: 0.0082,
    21903: 0.0075,
    47209: 0.0066,
    47766: 0.0055,
    47626: 0.0047,
    16797: 0.0044,
    26209: 0.0043,
    27845: 0.0043,
    27966: 0.0042,
    22935: 0.0035,
    24964: 0.0034,
    45007: 0.0032,
    39275: 0.0031,
    49683: 0.0030,
    28204: 0.0028,
    5876: 0.0027,
    8277: 0.0026,
    40706: 0.0026,
}
ANCHOR_REPEAT = 0.85

# Staples favour repeatable products, so best sellers and repeatable departments end up with more
# lines than their popularity alone gives; these factors (measured on 20,000 users) undo that.
ANCHOR_CORRECTION = 0.72
DEPARTMENT_CORRECTION: dict[int, float] = {
    1: 1.018,
    2: 1.273,
    3: 0.933,
    4: 0.954,
    5: 1.085,
    6: 1.266,
    7: 0.91,
    8: 1.129,
    9: 1.133,
    10: 0.984,
    11: 1.43,
    12: 0.967,
    13: 1.344,
    14: 0.997,
    15: 1.16,
    16: 0.932,
    17: 1.217,
    18: 1.205,
    19: 1.007,
    20: 0.981,
    21: 1.334,
}


@dataclass(frozen=True)
class ProductTraits:
    """Row-aligned with a catalog: popularity (sums to 1) and repeatability in (0, 1)."""

    popularity: np.ndarray
    repeat: np.ndarray


def _keyed_normal(product_id: np.ndarray, stream: int) -> np.ndarray:
    draws = np.random.default_rng([TRAIT_SEED, stream]).standard_normal(int(product_id.max()) + 1)
    return draws[product_id]


def _group_share(keys: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(keys, weights=weights, minlength=size)


def product_traits(catalog: Catalog) -> ProductTraits:
    """Spread each department's and aisle's real line share over its products, skewed like real sales."""
    product_id = catalog.product_id
    aisle = catalog.aisle_id
    department = catalog.department_id
    max_aisle = int(aisle.max()) + 1
    department_of_aisle = np.zeros(max_aisle, dtype=np.int64)
    department_of_aisle[aisle] = department

    products_per_aisle = np.bincount(aisle, minlength=max_aisle).astype(float)
    department_share = np.zeros(int(department.max()) + 1)
    for department_key, (share, _) in DEPARTMENT_TARGETS.items():
        if department_key < department_share.size:
            department_share[department_key] = share * DEPARTMENT_CORRECTION[department_key]
    department_share[department_share == 0] = 0.001

    aisle_share = np.zeros(max_aisle)
    fixed = np.zeros(max_aisle, dtype=bool)
    for aisle_key, share in AISLE_TARGETS.items():
        if aisle_key < max_aisle and products_per_aisle[aisle_key] > 0:
            aisle_share[aisle_key], fixed[aisle_key] = share, True
    present = products_per_aisle > 0
    free_weight = np.where(present & ~fixed, products_per_aisle**0.8, 0.0)
    for department_key in np.unique(department).tolist():
        in_department = present & (department_of_aisle == department_key)
        remaining = max(department_share[department_key] - aisle_share[in_department & fixed].sum(), 0.0)
        free_total = free_weight[in_department].sum()
        if free_total > 0:
            aisle_share[in_department & ~fixed] = remaining * free_weight[in_department & ~fixed] / free_total

    organic = np.array(["organic" in name.lower() for name in catalog.product_name])
    raw = np.exp(PRODUCT_SPREAD * _keyed_normal(product_id, 1)) * np.where(organic, ORGANIC_BOOST, 1.0)
    anchor_share = ANCHOR_CORRECTION * np.array(
        [ANCHOR_TARGETS.get(int(i), 0.0) for i in product_id.tolist()]
    )
    is_anchor = anchor_share > 0
    raw[is_anchor] = 0.0
    anchored_per_aisle = _group_share(aisle, anchor_share, max_aisle)
    raw_per_aisle = _group_share(aisle, raw, max_aisle)
    room = np.maximum(aisle_share - anchored_per_aisle, 0.2 * aisle_share)
    scale = np.divide(room, raw_per_aisle, out=np.zeros(max_aisle), where=raw_per_aisle > 0)
    popularity = np.where(is_anchor, anchor_share, raw * scale[aisle])
    if is_anchor.any():
        popularity = np.where(
            is_anchor, popularity, np.minimum(popularity, 0.7 * anchor_share[is_anchor].min())
        )
    popularity /= popularity.sum()

    department_repeat = np.full(department_share.size, 0.5)
    for department_key, (_, rate) in DEPARTMENT_TARGETS.items():
        if department_key < department_repeat.size:
            department_repeat[department_key] = rate
    logit = np.log(department_repeat[department] / (1 - department_repeat[department]))
    repeat = 1 / (1 + np.exp(-(logit + REPEAT_SPREAD * _keyed_normal(product_id, 2))))
    repeat[is_anchor] = ANCHOR_REPEAT
    return ProductTraits(popularity=popularity, repeat=repeat)
