"""Latent shopper traits: how often and when each user shops, basket habit, tastes and staples.

These hidden traits are what make the generated history learnable: a user's staples come back order
after order with user-specific probabilities, adopted and dropped over time, while exploration follows
global popularity tilted towards the user's favourite departments and aisles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import Catalog
from .popularity import ProductTraits
from .sampling import GroupSampler, row_sampler, within_ranges

# Orders per user: a mix of light and heavy shoppers (extra orders beyond the first four are
# geometric), fitted to 11.6% of users with 4 orders, a median of 10, a mean of 16.6, 0.67% at 100.
HEAVY_SHARE = 0.464
LIGHT_EXTRA_MEAN = 4.59
HEAVY_EXTRA_MEAN = 22.16
MIN_ORDERS = 4
MAX_ORDERS = 100

BASKET_MEDIAN = 8.5
BASKET_SPREAD = 0.5
HABIT_MEAN_LOGIT = 2.3
HABIT_SPREAD = 0.55
POOL_PER_BASKET = 4.0
STAPLE_SHAPE = 1.2
STAPLE_REPEAT_POWER = 3.5
POOL_REPEAT_POWER = 2.0
MAX_STAPLE_PROBABILITY = 0.7
STAPLE_OVERSHOOT = 1.05
NEVER_STOP = 10_000
CYCLE_ORDERS = (4.0, 20.0)
MAX_CYCLE_SWING = 1.0
LATE_ADOPTION_SHARE = 0.15
DROP_SHARE = 0.12
DEPARTMENT_TILT = 0.55
NICHE_DEPARTMENTS = (5, 8, 18)
NICHE_SHARE = 0.12
FAVOURITE_AISLES = 3
FAVOURITE_AISLE_SHARE = 0.2
WEEKLY_SHARE = 0.12
HABIT_SLOPE = 1.5
CADENCE_MEDIAN_DAYS = 16.5
CADENCE_SLOPE = 0.6
CADENCE_SPREAD = 0.75
ADOPTION_HORIZON = 1.3


@dataclass(frozen=True)
class StaplePools:
    """Every user's staples, flattened: user u owns entries offset[u] to offset[u + 1].

    Each staple has a per-order probability, an active window [start, stop) of order numbers, its
    department (for the trip mood) and a slow cycle (speed in radians per order, phase, swing)."""

    offset: np.ndarray
    product: np.ndarray
    probability: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    department: np.ndarray
    speed: np.ndarray
    phase: np.ndarray
    swing: np.ndarray

    def expand(self, user_of_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, staple index) pairs covering each row's user's staples, rows ascending."""
        lengths = np.diff(self.offset)[user_of_row]
        rows = np.repeat(np.arange(len(user_of_row)), lengths)
        members = np.repeat(self.offset[user_of_row], lengths) + within_ranges(lengths)
        return rows, members


@dataclass(frozen=True)
class Users:
    """Per-user trait arrays (index = user_id - 1) and their staples."""

    join_batch: np.ndarray
    first_orders: np.ndarray
    basket: np.ndarray
    habit: np.ndarray
    cadence: np.ndarray
    weekly: np.ndarray
    favourite_day: np.ndarray
    day_loyalty: np.ndarray
    favourite_hour: np.ndarray
    hour_loyalty: np.ndarray
    department_sampler: GroupSampler
    favourite_aisles: np.ndarray
    pools: StaplePools

    @property
    def count(self) -> int:
        return len(self.join_batch)


@dataclass(frozen=True)
class ProductSamplers:
    """Popularity-weighted product draws by department and by aisle, for exploring and for staples."""

    explore_by_department: GroupSampler
    explore_by_aisle: GroupSampler
    staple_by_department: GroupSampler
    department_weight: np.ndarray

    @classmethod
    def build(cls, catalog: Catalog, traits: ProductTraits, available: np.ndarray) -> ProductSamplers:
        department_count = int(catalog.department_id.max()) + 1
        aisle_count = int(catalog.aisle_id.max()) + 1
        explore = np.where(available, traits.popularity, 0.0)
        staple = explore * traits.repeat**POOL_REPEAT_POWER
        return cls(
            explore_by_department=GroupSampler(catalog.department_id, explore, department_count),
            explore_by_aisle=GroupSampler(catalog.aisle_id, explore, aisle_count),
            staple_by_department=GroupSampler(catalog.department_id, staple, department_count),
            department_weight=np.bincount(catalog.department_id, weights=explore, minlength=department_count),
        )


def draw_order_counts(rng: np.random.Generator, size: int) -> np.ndarray:
    heavy = rng.random(size) < HEAVY_SHARE
    mean = np.where(heavy, HEAVY_EXTRA_MEAN, LIGHT_EXTRA_MEAN)
    extra = rng.geometric(1 / (1 + mean)) - 1
    return np.minimum(MIN_ORDERS + extra, MAX_ORDERS).astype(np.int16)


def _department_tilt(rng: np.random.Generator, size: int, department_weight: np.ndarray) -> np.ndarray:
    tilt = np.exp(DEPARTMENT_TILT * rng.standard_normal((size, department_weight.size)))
    for department in NICHE_DEPARTMENTS:
        if department < department_weight.size:
            buys = rng.random(size) < NICHE_SHARE
            tilt[:, department] = np.where(buys, 1 / NICHE_SHARE, 0.02)
    return tilt * department_weight


def _fill_to_target(affinity: np.ndarray, owner: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Scale each user's staple affinities so their probabilities (capped) add up to the target."""
    size = len(target)
    scale = target / np.maximum(np.bincount(owner, weights=affinity, minlength=size), 1e-9)
    for _ in range(12):
        capped = np.minimum(affinity * scale[owner], MAX_STAPLE_PROBABILITY)
        total = np.bincount(owner, weights=capped, minlength=size)
        scale *= np.clip(target / np.maximum(total, 1e-9), 1.0, 4.0)
    return np.minimum(affinity * scale[owner], MAX_STAPLE_PROBABILITY)


def _staple_pools(
    rng: np.random.Generator,
    samplers: ProductSamplers,
    traits: ProductTraits,
    department_sampler: GroupSampler,
    basket: np.ndarray,
    habit: np.ndarray,
    first_orders: np.ndarray,
) -> StaplePools:
    """Each user's staples with per-order probabilities; some are adopted late and some dropped for a
    successor from the same department (a brand switch), so recency matters as well as frequency."""
    size = len(basket)
    pool_size = np.maximum(3, np.round(basket * POOL_PER_BASKET * rng.lognormal(0, 0.3, size)))
    owner = np.repeat(np.arange(size), pool_size.astype(np.int64))
    department = department_sampler.draw(owner, rng.random(owner.size))
    product = samplers.staple_by_department.draw(department, rng.random(owner.size))
    first = _first_of_pairs(owner, product)
    owner, product, department = owner[first], product[first], department[first]
    affinity = rng.gamma(STAPLE_SHAPE, 1.0, owner.size) * traits.repeat[product] ** STAPLE_REPEAT_POWER
    probability = _fill_to_target(affinity, owner, STAPLE_OVERSHOOT * habit * basket)
    horizon = np.maximum(3, np.round(first_orders * ADOPTION_HORIZON)).astype(np.int64)[owner]
    late = rng.random(owner.size) < LATE_ADOPTION_SHARE
    start = np.where(late, 1 + np.floor(rng.random(owner.size) * horizon), 1)
    dropped = rng.random(owner.size) < DROP_SHARE
    stop = np.where(dropped, start + 1 + np.floor(rng.random(owner.size) * horizon), NEVER_STOP)
    successors = int(dropped.sum())
    owner = np.concatenate([owner, owner[dropped]])
    product = np.concatenate(
        [product, samplers.staple_by_department.draw(department[dropped], rng.random(successors))]
    )
    probability = np.concatenate([probability, probability[dropped]])
    start = np.concatenate([start, stop[dropped]])
    stop = np.concatenate([stop, np.full(successors, NEVER_STOP)])
    department = np.concatenate([department, department[dropped]])
    keep = _first_of_pairs(owner, product)
    kept = len(keep)
    return StaplePools(
        offset=np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=size))]),
        product=product[keep].astype(np.int32),
        probability=probability[keep].astype(np.float32),
        start=start[keep].astype(np.int16),
        stop=np.minimum(stop[keep], NEVER_STOP).astype(np.int16),
        department=department[keep].astype(np.int16),
        speed=(2 * np.pi / rng.uniform(*CYCLE_ORDERS, kept)).astype(np.float32),
        phase=rng.uniform(0, 2 * np.pi, kept).astype(np.float32),
        swing=rng.uniform(0, MAX_CYCLE_SWING, kept).astype(np.float32),
    )


def _first_of_pairs(owner: np.ndarray, product: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each (owner, product), sorted by owner then product."""
    key = owner.astype(np.int64) * (int(product.max()) + 1) + product
    _, first = np.unique(key, return_index=True)
    return first


def make_users(
    rng: np.random.Generator,
    join_batch: np.ndarray,
    catalog: Catalog,
    traits: ProductTraits,
    samplers: ProductSamplers,
    day_weights: np.ndarray,
    hour_weights: np.ndarray,
) -> Users:
    """Draw every trait for all users at once (new users of later batches included)."""
    size = len(join_batch)
    first_orders = draw_order_counts(rng, size)
    orders_factor = np.log(first_orders / 10.0)
    basket = BASKET_MEDIAN * np.exp(BASKET_SPREAD * rng.standard_normal(size))
    habit_logit = HABIT_MEAN_LOGIT + HABIT_SLOPE * orders_factor + HABIT_SPREAD * rng.standard_normal(size)
    habit = 1 / (1 + np.exp(-habit_logit))
    weekly = rng.random(size) < WEEKLY_SHARE
    cadence_spread = CADENCE_SPREAD * rng.standard_normal(size)
    cadence = np.exp(np.log(CADENCE_MEDIAN_DAYS) - CADENCE_SLOPE * orders_factor + cadence_spread)
    cadence = np.where(weekly, np.where(rng.random(size) < 0.85, 7.0, 14.0), np.clip(cadence, 3.0, 90.0))
    day_loyalty = np.where(weekly, rng.uniform(0.6, 0.9, size), rng.uniform(0.0, 0.3, size))
    aisle_count = int(catalog.aisle_id.max()) + 1
    aisle_weight = np.bincount(catalog.aisle_id, weights=traits.popularity, minlength=aisle_count)
    favourite_aisles = rng.choice(
        aisle_count, size=(size, FAVOURITE_AISLES), p=aisle_weight / aisle_weight.sum()
    )
    favourite_day = rng.choice(day_weights.size, size=size, p=day_weights)
    favourite_hour = rng.choice(hour_weights.size, size=size, p=hour_weights)
    hour_loyalty = rng.uniform(0.3, 0.9, size)
    department_sampler = row_sampler(_department_tilt(rng, size, samplers.department_weight))
    pools = _staple_pools(rng, samplers, traits, department_sampler, basket, habit, first_orders)
    return Users(
        join_batch=np.asarray(join_batch, dtype=np.int16),
        first_orders=first_orders,
        basket=basket.astype(np.float32),
        habit=habit.astype(np.float32),
        cadence=cadence.astype(np.float32),
        weekly=weekly,
        favourite_day=favourite_day.astype(np.int8),
        day_loyalty=day_loyalty.astype(np.float32),
        favourite_hour=favourite_hour.astype(np.int8),
        hour_loyalty=hour_loyalty.astype(np.float32),
        department_sampler=department_sampler,
        favourite_aisles=favourite_aisles.astype(np.int16),
        pools=pools,
    )
