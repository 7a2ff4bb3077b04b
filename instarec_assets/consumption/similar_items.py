"""Item-to-item similarity ("customers who buy this also buy"): co-purchases blended with embeddings.

Two products are similar when they land in the same basket more often than their popularity alone
explains. The co-occurrence score is the count of shared baskets normalised by both products' basket
counts (the cosine of their basket-incidence vectors: together / sqrt(baskets_a * baskets_b)), which,
unlike raw lift, does not let a product bought twice dominate; a pair needs at least `min_support`
shared baskets. Lift is kept beside it for the metadata.

The GraphSAGE product embeddings can add to it: score = (1 - w) * co-occurrence + w * max(cosine, 0),
over the product's best co-occurrence pairs plus its nearest embedding neighbours, so a product with
too little support (a cold one: none at all) is filled with neighbours. w = 0 is co-occurrence alone
(no neighbour enters), w = 1 the embeddings alone; `similar_items_evaluation` chooses w on held-out
baskets. The score stays in [0, 1]. Ties break on shared baskets, then product id, so the same history
and embeddings always give the same lists. Only products current in the product dimension are
listed, either as the anchor or as a similar item, and never the product itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import torch

from instarec_assets.consumption.similar_counts import (
    StoredCounts,
    cooccurrence_arrays,
    cooccurrence_from_counts,
    ranked_cooccurrence_sql,
    ranked_order,
)
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.duck import StagedParquet, copy_to_parquet, create_view
from instarec_assets.ml.graphsage.explore import EmbeddingTable

SIMILAR_TOP_K = 20
MIN_SUPPORT = 3
# Co-occurrence pairs per product the blend considers: a pair ranked lower by co-occurrence would need
# an embedding cosine far above the product's own neighbours' to reach the top 20.
COOCCURRENCE_CANDIDATES = 100
# Cosines are rounded so the block size of the matrix product (BLAS summation order) cannot flip a rank.
SIMILARITY_DECIMALS = 6
NEIGHBOUR_BLOCK_ROWS = 1024
PAIR_CHUNK = 200_000

CURRENT_PRODUCTS_SQL = """
SELECT DISTINCT product_id::BIGINT AS product_id
FROM read_parquet($products, hive_partitioning = false)
WHERE is_current
ORDER BY product_id
"""

# `{lines}` is a view of clean order lines (order_id, product_id, ...): the whole history, or the part
# of it the held-out evaluation may learn from.
COOCCURRENCE_SQL = """
WITH catalog AS (
    SELECT DISTINCT product_id FROM read_parquet($products, hive_partitioning = false) WHERE is_current
),
lines AS (
    SELECT DISTINCT order_id, product_id FROM {lines} SEMI JOIN catalog USING (product_id)
),
baskets AS (
    SELECT count(DISTINCT order_id)::DOUBLE AS n FROM lines
),
popularity AS (
    SELECT product_id, count(*) AS baskets FROM lines GROUP BY product_id
),
pairs AS (
    SELECT a.product_id, b.product_id AS similar_product_id, count(*) AS together
    FROM lines AS a JOIN lines AS b ON a.order_id = b.order_id AND a.product_id <> b.product_id
    GROUP BY ALL
    HAVING count(*) >= $min_support
),
""" + ranked_cooccurrence_sql("(SELECT n FROM baskets)")

# The ranked lists with the current names, aisle and department of each similar product.
NAMED_SQL = """
WITH catalog AS (
    SELECT product_id, any_value(product_name) AS product_name, any_value(aisle_id) AS aisle_id,
           any_value(department_id) AS department_id
    FROM read_parquet($products, hive_partitioning = false)
    WHERE is_current
    GROUP BY product_id
)
SELECT r.product_id::INTEGER AS product_id, r.rank::TINYINT AS rank,
       r.similar_product_id::INTEGER AS similar_product_id,
       catalog.product_name, aisles.aisle, departments.department,
       r.score, r.lift, r.together::INTEGER AS together, r.cooccurrence, r.similarity
FROM similar_ranked AS r
JOIN catalog ON catalog.product_id = r.similar_product_id
LEFT JOIN read_parquet($aisles, hive_partitioning = false) AS aisles USING (aisle_id)
LEFT JOIN read_parquet($departments, hive_partitioning = false) AS departments USING (department_id)
ORDER BY r.product_id, r.rank
"""


# What the served table holds: anchors listed, mean score, current products with at least $k items,
# pairs filled from the embeddings (no shared basket).
SERVED_SUMMARY_SQL = """
WITH lists AS (
    SELECT product_id, count(*) AS items FROM read_parquet($similar, hive_partitioning = false) GROUP BY product_id
)
SELECT (SELECT count(*) FROM lists),
       (SELECT coalesce(avg(score), 0) FROM read_parquet($similar, hive_partitioning = false)),
       (SELECT count(*) FROM lists WHERE items >= $k) / greatest((
           SELECT count(DISTINCT product_id) FROM read_parquet($products, hive_partitioning = false)
           WHERE is_current), 1),
       (SELECT count(*) FROM read_parquet($similar, hive_partitioning = false) WHERE together = 0)
"""


@dataclass(frozen=True)
class ServedSummary:
    """The served table in four numbers (the asset's metadata)."""

    products: int
    mean_score: float
    coverage: float  # share of current products with at least k similar items
    filled_pairs: int  # pairs from the embeddings alone (no shared basket)


def served_summary(
    conn: duckdb.DuckDBPyConnection, similar_uri: str, products_uri: str, k: int
) -> ServedSummary:
    """Products listed, mean score, coverage at `k` and embedding-filled pairs of a similar-items file."""
    products, mean_score, coverage, filled = conn.execute(
        SERVED_SUMMARY_SQL, {"similar": similar_uri, "products": products_uri, "k": int(k)}
    ).fetchall()[0]
    return ServedSummary(int(products), float(mean_score), float(coverage), int(filled))


@dataclass(frozen=True)
class PairTable:
    """Scored (product, similar product) pairs as parallel arrays."""

    product_id: np.ndarray  # int64
    similar_product_id: np.ndarray  # int64
    together: np.ndarray  # int64, shared baskets (0 for an embedding neighbour)
    cooccurrence: np.ndarray  # float64 in [0, 1]
    lift: np.ndarray  # float64
    similarity: np.ndarray  # float64 in [0, 1]: the embedding cosine, clipped at 0 (0 without one)
    score: np.ndarray  # float64 in [0, 1]
    rank: np.ndarray  # int64, 1 = best (0 before ranking)

    def __len__(self) -> int:
        return int(self.product_id.shape[0])

    def to_arrow(self) -> pa.Table:
        return pa.table({name: getattr(self, name) for name in self.__dataclass_fields__})


def check_parameters(top_k: int, min_support: int, weight: float = 0.0) -> None:
    """One clear line per bad parameter, before any work."""
    if top_k < 1:
        raise ValueError(f"similar items: top_k must be at least 1, got {top_k}")
    if min_support < 1:
        raise ValueError(f"similar items: min_support must be at least 1, got {min_support}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"similar items: weight must be between 0 and 1, got {weight}")


def current_products(conn: duckdb.DuckDBPyConnection, products_uri: str) -> np.ndarray:
    """Sorted ids of the products current in the product dimension."""
    column = conn.execute(CURRENT_PRODUCTS_SQL, {"products": products_uri}).fetchnumpy()["product_id"]
    return np.asarray(column, dtype=np.int64)


def cooccurrence_pairs(
    conn: duckdb.DuckDBPyConnection,
    lines_view: str,
    products_uri: str,
    min_support: int = MIN_SUPPORT,
    candidates: int = COOCCURRENCE_CANDIDATES,
) -> dict[str, np.ndarray]:
    """Each current product's `candidates` best co-occurrence pairs over the lines of `lines_view`
    (a view name of ours, never user input), sorted by (product_id, similar_product_id)."""
    sql = COOCCURRENCE_SQL.format(lines=lines_view)
    found = conn.execute(
        sql, {"products": products_uri, "min_support": int(min_support), "candidates": int(candidates)}
    ).fetchnumpy()
    return cooccurrence_arrays(found)


def restrict(table: EmbeddingTable, product_ids: np.ndarray) -> EmbeddingTable:
    """The embeddings of `product_ids` (current products) that are not zero vectors."""
    keep = np.isin(table.ids, product_ids)
    if table.ids.size:
        keep &= np.abs(table.vectors).sum(axis=1) > 0
    return EmbeddingTable(table.ids[keep], table.vectors[keep])


def embedding_neighbours(
    table: EmbeddingTable, n: int, block_rows: int = NEIGHBOUR_BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """(product_id, similar_product_id) of every product's `n` nearest others by cosine (brute force,
    one block of rows against all at a time; the product itself never), neighbours at cosine <= 0 left
    out. Pass a `restrict`-ed table so only current products are anchors and neighbours. torch's
    top-k (the graph extra the embeddings come from) selects 3x faster than numpy's argpartition."""
    ids = table.ids
    count = ids.shape[0]
    n = min(n, count - 1)
    if n < 1:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    vectors = torch.from_numpy(np.ascontiguousarray(table.vectors, dtype=np.float32))
    anchors, neighbours = [], []
    with torch.inference_mode():
        for start in range(0, count, block_rows):
            stop = min(start + block_rows, count)
            cosines = vectors[start:stop] @ vectors.T
            rows = torch.arange(stop - start)
            cosines[rows, rows + start] = -torch.inf
            values, best = torch.topk(cosines, n, dim=1)
            keep = (values > 0).numpy()
            best = best.numpy()
            anchors.append(np.broadcast_to(ids[start:stop, None], best.shape)[keep])
            neighbours.append(ids[best[keep]])
    return np.concatenate(anchors), np.concatenate(neighbours)


def pair_similarity(table: EmbeddingTable | None, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine of each (left, right) pair's embeddings clipped to [0, 1], rounded; 0 where one has none."""
    out = np.zeros(left.shape[0], dtype=np.float64)
    if table is None or table.ids.size == 0 or left.size == 0:
        return out
    li, ri = (np.clip(np.searchsorted(table.ids, side), 0, table.ids.size - 1) for side in (left, right))
    found = (table.ids[li] == left) & (table.ids[ri] == right)
    for start in range(0, left.shape[0], PAIR_CHUNK):
        part = slice(start, start + PAIR_CHUNK)
        out[part] = np.einsum("ij,ij->i", table.vectors[li[part]], table.vectors[ri[part]])
    out = np.where(found, np.clip(out, 0.0, 1.0), 0.0)
    return np.round(out, SIMILARITY_DECIMALS)


def _pair_keys(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return (left.astype(np.int64) << 32) | right.astype(np.int64)


def blend_candidates(
    cooccurrence: dict[str, np.ndarray],
    embeddings: EmbeddingTable | None = None,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> PairTable:
    """Every pair a blend may rank: the co-occurrence pairs and the embedding `neighbours`, sorted by
    (product_id, similar_product_id), with their co-occurrence (0 for a neighbour only) and cosine;
    unscored. Computed once for every weight of a grid."""
    known = _pair_keys(cooccurrence["product_id"], cooccurrence["similar_product_id"])
    keys = known
    if neighbours is not None and neighbours[0].size:
        keys = np.concatenate([keys, _pair_keys(*neighbours)])
    keys = _sorted_unique(keys)
    left, right = keys >> 32, keys & 0xFFFFFFFF
    hit, source = np.zeros(keys.size, dtype=bool), np.zeros(keys.size, dtype=np.int64)
    if known.size:
        order = np.argsort(known, kind="stable")
        at = np.clip(np.searchsorted(known[order], keys), 0, known.size - 1)
        hit, source = known[order][at] == keys, order[at]

    def looked_up(name: str, dtype) -> np.ndarray:
        values = cooccurrence[name][source] if known.size else np.zeros(keys.size)
        return np.where(hit, values, 0).astype(dtype)

    return PairTable(
        product_id=left,
        similar_product_id=right,
        together=looked_up("together", np.int64),
        cooccurrence=looked_up("cooccurrence", np.float64),
        lift=looked_up("lift", np.float64),
        similarity=pair_similarity(embeddings, left, right),
        score=np.zeros(keys.size),
        rank=np.zeros(keys.size, dtype=np.int64),
    )


def rank_blend(candidates: PairTable, weight: float, top_k: int) -> PairTable:
    """Each product's `top_k` candidates by (1 - weight) * co-occurrence + weight * cosine, ranked by
    score, then shared baskets, then product id. Pairs scoring 0 are dropped, so at weight 0 no
    embedding neighbour enters (co-occurrence alone)."""
    score = np.clip((1.0 - weight) * candidates.cooccurrence + weight * candidates.similarity, 0.0, 1.0)
    keep = np.flatnonzero(score > 0)
    order = keep[
        ranked_order(
            candidates.product_id[keep],
            score[keep],
            candidates.together[keep],
            candidates.similar_product_id[keep],
        )
    ]
    rank = _rank_within(candidates.product_id[order])
    top = order[rank <= top_k]
    return PairTable(
        product_id=candidates.product_id[top],
        similar_product_id=candidates.similar_product_id[top],
        together=candidates.together[top],
        cooccurrence=candidates.cooccurrence[top],
        lift=candidates.lift[top],
        similarity=candidates.similarity[top],
        score=score[top],
        rank=rank[rank <= top_k],
    )


def blend(
    cooccurrence: dict[str, np.ndarray],
    weight: float,
    top_k: int,
    embeddings: EmbeddingTable | None = None,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> PairTable:
    """Each product's `top_k` pairs by (1 - weight) * co-occurrence + weight * cosine: over its
    co-occurrence pairs, plus its embedding `neighbours` when weight > 0 (see `rank_blend`)."""
    return rank_blend(
        blend_candidates(cooccurrence, embeddings, neighbours if weight > 0 else None), weight, top_k
    )


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a shift: numpy's hash-based unique is slow on 10^6 keys)."""
    return runs(np.sort(values))[0]


def runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a sorted array and how often each occurs."""
    if sorted_values.size == 0:
        return sorted_values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    return sorted_values[starts], np.diff(np.r_[starts, sorted_values.size])


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """1, 2, ... within each run of equal values of a sorted array."""
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lengths = np.diff(np.r_[starts, groups.size])
    return np.arange(groups.size) - np.repeat(starts, lengths) + 1


def similar_items(
    conn: duckdb.DuckDBPyConnection,
    order_products_uris: Sequence[str],
    products_uri: str,
    aisles_uri: str,
    departments_uri: str,
    out_path: Path,
    top_k: int = SIMILAR_TOP_K,
    min_support: int = MIN_SUPPORT,
    embeddings: EmbeddingTable | None = None,
    weight: float = 0.0,
) -> StagedParquet:
    """The `top_k` most similar current products of every current product over the history's order
    lines (every batch's clean_order_products) blended with `embeddings` (the serving framing) by
    `weight`, with current names, aisle and department. Columns: product_id, rank,
    similar_product_id, product_name, aisle, department, score, lift, together, cooccurrence,
    similarity. The reference the stored-counts path (`similar_items_from_counts`) equals."""
    check_parameters(top_k, min_support, weight)
    create_view(conn, "similar_history_lines", order_products_uris, CLEAN_ORDER_PRODUCTS_SCHEMA)
    pairs = cooccurrence_pairs(conn, "similar_history_lines", products_uri, min_support)
    return _ranked_and_named(
        conn, pairs, products_uri, aisles_uri, departments_uri, out_path, top_k, embeddings, weight
    )


def similar_items_from_counts(
    conn: duckdb.DuckDBPyConnection,
    counts_uri: str,
    baskets: float,
    products_uri: str,
    aisles_uri: str,
    departments_uri: str,
    out_path: Path,
    top_k: int = SIMILAR_TOP_K,
    min_support: int = MIN_SUPPORT,
    embeddings: EmbeddingTable | None = None,
    weight: float = 0.0,
    stored: StoredCounts | None = None,
) -> StagedParquet:
    """`similar_items` from stored co-purchase counts (similar_counts: strong pairs and popularity;
    `stored`: the same rows already in memory) and the history's basket total, every anchor ranked
    without a basket self-join; the same rows."""
    check_parameters(top_k, min_support, weight)
    pairs = cooccurrence_from_counts(
        conn, counts_uri, products_uri, baskets, min_support, COOCCURRENCE_CANDIDATES, stored
    )
    return _ranked_and_named(
        conn, pairs, products_uri, aisles_uri, departments_uri, out_path, top_k, embeddings, weight
    )


def _ranked_and_named(
    conn: duckdb.DuckDBPyConnection,
    pairs: dict[str, np.ndarray],
    products_uri: str,
    aisles_uri: str,
    departments_uri: str,
    out_path: Path,
    top_k: int,
    embeddings: EmbeddingTable | None,
    weight: float,
) -> StagedParquet:
    table = restrict(embeddings, current_products(conn, products_uri)) if embeddings is not None else None
    neighbours = embedding_neighbours(table, top_k) if table is not None and weight > 0 else None
    ranked = blend(pairs, weight, top_k, table, neighbours).to_arrow()
    conn.register("similar_ranked", ranked)
    try:
        params = {"products": products_uri, "aisles": aisles_uri, "departments": departments_uri}
        return copy_to_parquet(conn, NAMED_SQL, out_path, params=params)
    finally:
        conn.unregister("similar_ranked")
