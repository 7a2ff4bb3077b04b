"""Item-to-item similarity ("customers who buy this also buy") from co-purchases within baskets.

Two products are similar when they land in the same basket more often than their popularity alone
explains. The score is the co-occurrence normalised by both products' basket counts (the cosine of
their basket-incidence vectors: together / sqrt(baskets_a * baskets_b)), which, unlike raw lift,
does not let a product bought twice dominate; a pair needs at least `min_support` shared baskets.
Lift is kept beside it for the metadata. Ties break on shared baskets, then product id, so the same
history always gives the same lists. Only products current in the product dimension are listed,
either as the anchor or as a similar item, and never the product itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.duck import StagedParquet, copy_to_parquet, create_view

SIMILAR_TOP_K = 20
MIN_SUPPORT = 3

SIMILAR_ITEMS_SQL = """
WITH catalog AS (
    SELECT product_id, product_name, aisle_id, department_id
    FROM read_parquet($products, hive_partitioning = false)
    WHERE is_current
),
lines AS (
    SELECT DISTINCT order_id, product_id FROM similar_history_lines SEMI JOIN catalog USING (product_id)
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
scored AS (
    SELECT pairs.product_id, pairs.similar_product_id, pairs.together,
           pairs.together / sqrt(pa.baskets * pb.baskets) AS score,
           pairs.together * (SELECT n FROM baskets) / (pa.baskets * pb.baskets) AS lift
    FROM pairs
    JOIN popularity AS pa ON pa.product_id = pairs.product_id
    JOIN popularity AS pb ON pb.product_id = pairs.similar_product_id
),
ranked AS (
    SELECT *, row_number() OVER (
        PARTITION BY product_id ORDER BY score DESC, together DESC, similar_product_id
    ) AS rank
    FROM scored
    QUALIFY rank <= $top_k
)
SELECT ranked.product_id, ranked.rank::TINYINT AS rank, ranked.similar_product_id,
       catalog.product_name, aisles.aisle, departments.department,
       ranked.score::DOUBLE AS score, ranked.lift::DOUBLE AS lift, ranked.together::INTEGER AS together
FROM ranked
JOIN catalog ON catalog.product_id = ranked.similar_product_id
LEFT JOIN read_parquet($aisles, hive_partitioning = false) AS aisles USING (aisle_id)
LEFT JOIN read_parquet($departments, hive_partitioning = false) AS departments USING (department_id)
ORDER BY ranked.product_id, ranked.rank
"""


def similar_items(
    conn: duckdb.DuckDBPyConnection,
    order_products_uris: Sequence[str],
    products_uri: str,
    aisles_uri: str,
    departments_uri: str,
    out_path: Path,
    top_k: int = SIMILAR_TOP_K,
    min_support: int = MIN_SUPPORT,
) -> StagedParquet:
    """The `top_k` most co-purchased current products of every current product over the history's
    order lines (every batch's clean_order_products), with current names, aisle and department."""
    if top_k < 1:
        raise ValueError(f"similar items: top_k must be at least 1, got {top_k}")
    if min_support < 1:
        raise ValueError(f"similar items: min_support must be at least 1, got {min_support}")
    create_view(conn, "similar_history_lines", order_products_uris, CLEAN_ORDER_PRODUCTS_SCHEMA)
    params = {
        "products": products_uri,
        "aisles": aisles_uri,
        "departments": departments_uri,
        "top_k": int(top_k),
        "min_support": int(min_support),
    }
    return copy_to_parquet(conn, SIMILAR_ITEMS_SQL, out_path, params=params)
