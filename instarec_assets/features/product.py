"""Product features: popularity and reorder behaviour over every user's history lines (never targets)."""

from __future__ import annotations

import duckdb

# A product's row from its sums over buyers (`p`: framing, product_id, purchases, buyers, rebuyers,
# reordered, cart_sum, orders_spanned, repeat_purchases; the last two NULL without rebuyers): the full
# build's and the incremental update's (features/incremental.py).
PRODUCT_ROW_SELECT = """
SELECT p.framing, p.product_id,
       p.purchases::INTEGER AS p_orders,
       p.buyers::INTEGER AS p_buyers,
       (p.rebuyers / p.buyers)::FLOAT AS p_reorder_prob,
       (p.reordered / p.purchases)::FLOAT AS p_reorder_ratio,
       (p.purchases / p.buyers)::FLOAT AS p_purchases_per_buyer,
       (p.cart_sum / p.purchases)::FLOAT AS p_cart_mean,
       (p.orders_spanned / p.repeat_purchases)::FLOAT AS p_orders_between_mean,
       c.aisle_id AS p_aisle_id,
       c.department_id AS p_department_id
FROM {sums} AS p
LEFT JOIN feat_catalog AS c USING (product_id)
"""

PRODUCT_SQL = f"""
CREATE OR REPLACE TEMP TABLE feat_product AS
WITH per_product AS (
    SELECT framing, product_id,
           sum(n) AS purchases,
           count(*) AS buyers,
           count(*) FILTER (WHERE n > 1) AS rebuyers,
           sum(reordered_sum) AS reordered,
           sum(cart_sum) AS cart_sum,
           sum(last_seq - first_seq) FILTER (WHERE n > 1) AS orders_spanned,
           sum(n - 1) FILTER (WHERE n > 1) AS repeat_purchases
    FROM feat_up
    GROUP BY framing, product_id
)
{PRODUCT_ROW_SELECT.format(sums="per_product")}"""

PRODUCT_FEATURES_SELECT = "SELECT * FROM feat_product ORDER BY framing, product_id"


def build_products(conn: duckdb.DuckDBPyConnection) -> None:
    """feat_product: one row per (framing, product) bought in that framing's history."""
    conn.execute(PRODUCT_SQL)
