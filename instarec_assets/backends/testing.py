"""Deterministic recommendation tables for tests and benchmarks of the serving stores.

Every value encodes (tag, user, rank), so a reader can tell from one list alone whether it is
complete (ranks 1..10) and whether it comes from one version only (one tag).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

TAG_SCALE = 1_000_000_000


def product_id_for(tag: int, user_id: int, rank: int) -> int:
    return tag * TAG_SCALE + (user_id % 10_000_000) * 10 + rank


def tag_of(product_id: int) -> int:
    return product_id // TAG_SCALE


def recommendations_table(user_ids: Iterable[int], tag: int = 1, ranks: int = 10) -> pa.Table:
    """`ranks` rows per user; product ids carry the tag, model_version is `model-<tag>`."""
    users = np.repeat(np.asarray(list(user_ids), dtype=np.int64), ranks)
    rank = np.tile(np.arange(1, ranks + 1, dtype=np.int64), len(users) // ranks if ranks else 0)
    product = tag * TAG_SCALE + (users % 10_000_000) * 10 + rank
    return pa.table(
        {
            "user_id": users,
            "rank": rank,
            "product_id": product,
            "product_name": pa.array([f"Product {p} · {tag}" for p in product.tolist()], pa.string()),
            "aisle": pa.array([f"aisle {r}" for r in rank.tolist()], pa.string()),
            "department": pa.array([f"department {tag}" for _ in range(len(users))], pa.string()),
            "probability": 1.0 / (rank + 1) + tag * 1e-6,
            "explore": rank == ranks,
            "model_version": pa.array([f"model-{tag}"] * len(users), pa.string()),
        }
    )


def similar_items_table(product_ids: Iterable[int], tag: int = 1, ranks: int = 5) -> pa.Table:
    """`ranks` similar items per product: similar ids carry the tag (`tag * TAG_SCALE + p * 100 + rank`),
    never the product itself, scores falling with rank."""
    anchors = np.repeat(np.asarray(list(product_ids), dtype=np.int64), ranks)
    rank = np.tile(np.arange(1, ranks + 1, dtype=np.int64), len(anchors) // ranks if ranks else 0)
    similar = tag * TAG_SCALE + anchors * 100 + rank
    return pa.table(
        {
            "product_id": anchors,
            "rank": rank,
            "similar_product_id": similar,
            "product_name": pa.array([f"Similar {p}" for p in similar.tolist()], pa.string()),
            "aisle": pa.array([f"aisle {r}" for r in rank.tolist()], pa.string()),
            "department": pa.array([f"department {tag}" for _ in range(len(anchors))], pa.string()),
            "score": 1.0 / (rank + 1),
            "lift": np.ones(len(anchors)),
            "together": np.full(len(anchors), 3, dtype=np.int32),
        }
    )
