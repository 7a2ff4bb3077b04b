"""The order timeline across all batches: who orders when, eval_set labels, and when lines land.

Orders are generated for the whole timeline at once, sorted by (user, order_number), so later batches
simply continue each user's history. A test order's lines are withheld until the user orders again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import within_ranges
from .users import MAX_ORDERS, Users

PRIOR, TRAIN, TEST = 0, 1, 2
EVAL_SET_NAMES = ("prior", "train", "test")
TRAIN_SHARE = 131_209 / 206_209
NEVER = -1

# Real order counts by day of week (0-6) and hour of day (0-23).
DAY_WEIGHTS = np.array([600_905, 587_478, 467_260, 436_972, 426_339, 453_368, 448_761], dtype=float)
HOUR_WEIGHTS = np.array(
    [
        22_758,
        12_398,
        7_539,
        5_474,
        5_527,
        9_569,
        30_529,
        91_868,
        178_201,
        257_812,
        288_418,
        284_728,
        272_841,
        277_999,
        283_042,
        283_639,
        272_553,
        228_795,
        182_912,
        140_569,
        104_292,
        78_109,
        61_468,
        40_043,
    ],
    dtype=float,
)
DAY_WEIGHTS /= DAY_WEIGHTS.sum()
HOUR_WEIGHTS /= HOUR_WEIGHTS.sum()
GAP_SHAPE = 3.0
HOUR_JITTER = 1.0
DAYS_CAP = 30
RETURNING_SHARE = (0.2, 0.3)
EXTRA_ORDER_WEIGHTS = np.array([0.6, 0.3, 0.1])


@dataclass(frozen=True)
class Orders:
    """Per-order arrays sorted by (user, order_number); user is 0-based (user_id - 1)."""

    user: np.ndarray
    number: np.ndarray
    batch: np.ndarray
    day: np.ndarray
    hour: np.ndarray
    days_since: np.ndarray
    eval_set: np.ndarray
    release_batch: np.ndarray
    order_id: np.ndarray

    @property
    def count(self) -> int:
        return len(self.user)


def orders_per_batch(rng: np.random.Generator, users: Users, batches: int) -> np.ndarray:
    """(users x batches) matrix of order counts: full histories on joining, a few more on returning."""
    counts = np.zeros((users.count, batches), dtype=np.int16)
    joined = users.join_batch
    counts[np.arange(users.count), joined] = users.first_orders
    frequency = np.sqrt(7.0 / users.cadence)
    for batch in range(1, batches):
        total = counts[:, :batch].sum(axis=1)
        eligible = (joined < batch) & (total < MAX_ORDERS)
        share = rng.uniform(*RETURNING_SHARE)
        chance = np.minimum(share * frequency / frequency[eligible].mean(), 0.95) if eligible.any() else 0.0
        returning = eligible & (rng.random(users.count) < chance)
        extra = rng.choice(3, size=users.count, p=EXTRA_ORDER_WEIGHTS) + 1
        extra = np.minimum(extra, MAX_ORDERS - total)
        counts[:, batch] += np.where(returning, extra, 0).astype(np.int16)
    return counts


def _days_and_weekdays(
    rng: np.random.Generator, users: Users, user: np.ndarray, first: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weekday from the user's habit; the gap since the last order is the user's cadence nudged to
    land on that weekday, so weekly shoppers produce the real spikes at 7, 14, 21 and 28 days."""
    size = len(user)
    loyal = rng.random(size) < users.day_loyalty[user]
    anyday = rng.choice(7, size=size, p=DAY_WEIGHTS)
    day = np.where(loyal, users.favourite_day[user], anyday).astype(np.int64)
    base = rng.gamma(GAP_SHAPE, users.cadence[user] / GAP_SHAPE)
    weekly = users.weekly[user]
    base = np.where(weekly, users.cadence[user] * rng.choice([1.0, 1.0, 1.0, 1.0, 1.0, 2.0], size=size), base)
    previous = np.concatenate([[0], day[:-1]])
    shift = (day - previous - np.round(base)) % 7
    shift = np.where(shift > 3, shift - 7, shift)
    gap = np.round(base) + shift
    gap = np.where(gap < 0, gap + 7, gap)
    gap = np.minimum(gap, DAYS_CAP).astype(np.int8)
    gap[first] = -1
    return day.astype(np.int8), gap


def _hours(rng: np.random.Generator, users: Users, user: np.ndarray) -> np.ndarray:
    size = len(user)
    loyal = rng.random(size) < users.hour_loyalty[user]
    jitter = np.round(rng.normal(0, HOUR_JITTER, size))
    habitual = np.clip(users.favourite_hour[user] + jitter, 0, 23)
    anytime = rng.choice(24, size=size, p=HOUR_WEIGHTS)
    return np.where(loyal, habitual, anytime).astype(np.int8)


def make_orders(rng: np.random.Generator, users: Users, counts: np.ndarray) -> Orders:
    """Lay out every order of every batch, label eval_set per batch and schedule each order's lines."""
    batches = counts.shape[1]
    per_user = counts.sum(axis=1).astype(np.int64)
    user = np.repeat(np.arange(users.count, dtype=np.int32), per_user)
    batch = np.repeat(np.tile(np.arange(batches, dtype=np.int16), users.count), counts.ravel())
    number = (within_ranges(per_user) + 1).astype(np.int16)
    size = len(user)
    same_user_next = np.zeros(size, dtype=bool)
    same_user_next[:-1] = user[1:] == user[:-1]
    next_batch = np.full(size, NEVER, dtype=np.int16)
    next_batch[:-1] = batch[1:]
    next_batch = np.where(same_user_next, next_batch, NEVER)
    last_in_batch = next_batch != batch
    labelled = np.where(rng.random(size) < TRAIN_SHARE, TRAIN, TEST)
    eval_set = np.where(last_in_batch, labelled, PRIOR).astype(np.int8)
    release_batch = np.where(eval_set == TEST, next_batch, batch).astype(np.int16)
    day, days_since = _days_and_weekdays(rng, users, user, number == 1)
    order_id = np.zeros(size, dtype=np.int64)
    issued = 0
    for batch_index in range(batches):
        in_batch = np.flatnonzero(batch == batch_index)
        order_id[in_batch] = issued + 1 + rng.permutation(len(in_batch))
        issued += len(in_batch)
    return Orders(
        user=user,
        number=number,
        batch=batch,
        day=day,
        hour=_hours(rng, users, user),
        days_since=days_since,
        eval_set=eval_set,
        release_batch=release_batch,
        order_id=order_id,
    )
