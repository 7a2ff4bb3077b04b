"""Vectorised weighted sampling within groups, the workhorse that replaces per-user Python loops."""

from __future__ import annotations

import numpy as np


class GroupSampler:
    """Draw items in proportion to their weights from a chosen group, millions of draws at once.

    All groups share one sorted array of cumulative weights offset by the group number (group g
    covers (g, g + 1]), so a batch of draws is a single searchsorted call.
    """

    def __init__(self, groups: np.ndarray, weights: np.ndarray, group_count: int) -> None:
        groups = np.asarray(groups, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        order = np.argsort(groups, kind="stable")
        sorted_groups = groups[order]
        sorted_weights = weights[order]
        counts = np.bincount(sorted_groups, minlength=group_count)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.stop = self.start + counts
        totals = np.bincount(sorted_groups, weights=sorted_weights, minlength=group_count)
        running = np.cumsum(sorted_weights)
        before_group = np.concatenate([[0.0], running])[self.start]
        within = running - before_group[sorted_groups]
        rank = np.arange(len(order)) - self.start[sorted_groups] + 1
        even = rank / np.maximum(counts[sorted_groups], 1)
        group_total = totals[sorted_groups]
        fraction = np.divide(within, group_total, out=even, where=group_total > 0)
        self.cdf = sorted_groups + fraction
        self.items = order

    def draw(self, groups: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Item index for each (group, uniform in [0, 1)) pair; groups must not be empty."""
        groups = np.asarray(groups, dtype=np.int64)
        position = np.searchsorted(self.cdf, groups + uniforms, side="right")
        position = np.clip(position, self.start[groups], self.stop[groups] - 1)
        return self.items[position]


def row_sampler(weights: np.ndarray) -> GroupSampler:
    """One categorical distribution per row of a 2-D weight matrix; draw() returns column numbers."""
    rows, columns = weights.shape
    groups = np.repeat(np.arange(rows), columns)
    sampler = GroupSampler(groups, weights.ravel(), rows)
    sampler.items = sampler.items % columns
    return sampler


def within_ranges(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., n-1 for each n in lengths, concatenated (the position of each element in its run)."""
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
