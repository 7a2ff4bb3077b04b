"""Order lines: staples rebought with per-user probabilities plus exploration, for every order at once.

`reordered` is derived from the generated history itself (1 iff the user bought the product in an
earlier order), and the cart order puts rebought items first more often, as real shoppers do.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .orders import Orders
from .sampling import within_ranges
from .users import FAVOURITE_AISLE_SHARE, FAVOURITE_AISLES, ProductSamplers, Users

ORDER_SIZE_SPREAD = 0.5
RAMP_DEPTH = 0.0
RAMP_ORDERS = 4.0
REORDER_CART_PULL = 0.07
EXPLORE_FLOOR = 0.1
MOOD_SPREAD = 0.7
MAX_BASKET = 145
CANDIDATES_PER_CHUNK = 8_000_000
NUMBER_SLOTS = 128
CART_BITS = 20


@dataclass(frozen=True)
class Lines:
    """Order lines sorted by (order_id, add_to_cart_order); `order` indexes the Orders arrays."""

    order: np.ndarray
    product: np.ndarray
    add_to_cart: np.ndarray
    reordered: np.ndarray


def _staples(
    rng: np.random.Generator, users: Users, orders: Orders, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each active staple joins an order with its per-user probability, swayed by the trip's mood per
    department (a produce run, a pantry restock) and by the staple's own slow cycle, so history predicts
    the next basket only as loosely as real history does. Also returns each order's expected staple
    count so exploration can top the basket up to the user's habit."""
    pools = users.pools
    pool_length = np.diff(pools.offset)[orders.user]
    bounds = np.searchsorted(np.cumsum(pool_length), np.arange(0, pool_length.sum(), CANDIDATES_PER_CHUNK))
    bounds = np.unique(np.concatenate([[0], bounds, [orders.count]]))
    picked_orders, picked_products = [], []
    expected = np.zeros(orders.count)
    department_count = int(pools.department.max()) + 1
    for first, last in itertools.pairwise(bounds):
        rows, members = pools.expand(orders.user[first:last])
        local = rows
        rows = rows + first
        number = orders.number[rows]
        active = (pools.start[members] <= number) & (number < pools.stop[members])
        mood = rng.standard_normal((last - first) * department_count, dtype=np.float32)
        mood = np.exp(MOOD_SPREAD * mood - np.float32(MOOD_SPREAD**2 / 2))
        chance = mood[local * department_count + pools.department[members]]
        angle = number.astype(np.float32) * pools.speed[members] + pools.phase[members]
        chance *= 1 + pools.swing[members] * np.sin(angle)
        chance *= pools.probability[members] * scale[rows]
        np.minimum(chance, 1, out=chance)
        chance[~active] = 0
        expected[first:last] = np.bincount(local, weights=chance, minlength=last - first)
        hit = rng.random(len(rows), dtype=np.float32) < chance
        picked_orders.append(rows[hit])
        picked_products.append(pools.product[members[hit]])
    return np.concatenate(picked_orders), np.concatenate(picked_products), expected


def _explore(
    rng: np.random.Generator,
    users: Users,
    orders: Orders,
    line_order: np.ndarray,
    samplers: ProductSamplers,
) -> np.ndarray:
    """New-to-the-user picks: a favourite aisle sometimes, else a department by the user's taste."""
    user = orders.user[line_order]
    size = len(line_order)
    favourite = rng.random(size) < FAVOURITE_AISLE_SHARE
    aisle = users.favourite_aisles[user, rng.integers(0, FAVOURITE_AISLES, size)]
    by_aisle = samplers.explore_by_aisle.draw(aisle, rng.random(size))
    department = users.department_sampler.draw(user, rng.random(size))
    by_department = samplers.explore_by_department.draw(department, rng.random(size))
    return np.where(favourite, by_aisle, by_department)


def make_lines(
    rng: np.random.Generator,
    users: Users,
    orders: Orders,
    samplers: ProductSamplers,
    base_samplers: ProductSamplers,
    product_batch: np.ndarray,
) -> Lines:
    """Generate, de-duplicate and label all lines; products only appear from their launch batch on."""
    size_factor = np.exp(ORDER_SIZE_SPREAD * rng.standard_normal(orders.count) - ORDER_SIZE_SPREAD**2 / 2)
    ramp = 1 - RAMP_DEPTH * np.exp(-(orders.number - 1) / RAMP_ORDERS)
    staple_scale = (size_factor * ramp).astype(np.float32)
    staple_order, staple_product, staple_mean = _staples(rng, users, orders, staple_scale)
    staple_count = np.bincount(staple_order, minlength=orders.count)
    within_cap = within_ranges(staple_count) < MAX_BASKET
    staple_order, staple_product = staple_order[within_cap], staple_product[within_cap]
    staple_count = np.minimum(staple_count, MAX_BASKET)
    basket_mean = users.basket[orders.user] * size_factor
    explore_mean = np.maximum(basket_mean - staple_mean, EXPLORE_FLOOR * basket_mean)
    explore_count = rng.poisson(explore_mean)
    explore_count = np.where(staple_count + explore_count == 0, 1, explore_count)
    explore_count = np.minimum(explore_count, np.maximum(MAX_BASKET - staple_count, 0))
    explore_order = np.repeat(np.arange(orders.count), explore_count)
    explore_product = _explore(rng, users, orders, explore_order, samplers)
    too_new = product_batch[explore_product] > orders.batch[explore_order]
    if too_new.any():
        explore_product[too_new] = _explore(rng, users, orders, explore_order[too_new], base_samplers)
    line_order = np.concatenate([staple_order, explore_order])
    product = np.concatenate([staple_product, explore_product.astype(np.int32)])
    del staple_order, staple_product, explore_order, explore_product
    return _label_and_sort(rng, orders, line_order, product)


def _label_and_sort(
    rng: np.random.Generator, orders: Orders, line_order: np.ndarray, product: np.ndarray
) -> Lines:
    """One sort by (user, product, order_number) drops in-order duplicates and finds first purchases."""
    product_slots = int(product.max()) + 1
    key = orders.user[line_order].astype(np.int64) * product_slots + product
    key = key * NUMBER_SLOTS + orders.number[line_order]
    order_by_key = np.argsort(key)
    key = key[order_by_key]
    keep = np.ones(len(key), dtype=bool)
    keep[1:] = key[1:] != key[:-1]
    earlier = np.zeros(len(key), dtype=bool)
    earlier[1:] = (key[1:] // NUMBER_SLOTS) == (key[:-1] // NUMBER_SLOTS)
    del key
    kept = order_by_key[keep]
    reordered = earlier[keep]
    del order_by_key, keep, earlier
    line_order = line_order[kept]
    product = product[kept]
    del kept
    pull = np.where(reordered, 0.0, REORDER_CART_PULL)
    cart_key = (rng.random(len(line_order)) + pull) / (1 + REORDER_CART_PULL)
    cart_key = (cart_key * ((1 << CART_BITS) - 1)).astype(np.int64)
    sort_key = (orders.order_id[line_order] << CART_BITS) | cart_key
    del cart_key
    final = np.argsort(sort_key)
    sorted_order_ids = orders.order_id[line_order[final]]
    del sort_key
    starts = np.ones(len(final), dtype=bool)
    starts[1:] = sorted_order_ids[1:] != sorted_order_ids[:-1]
    run_start = np.maximum.accumulate(np.where(starts, np.arange(len(final)), 0))
    add_to_cart = (np.arange(len(final)) - run_start + 1).astype(np.int16)
    return Lines(
        order=line_order[final].astype(np.int32),
        product=product[final].astype(np.int32),
        add_to_cart=add_to_cart,
        reordered=reordered[final].astype(np.int8),
    )
