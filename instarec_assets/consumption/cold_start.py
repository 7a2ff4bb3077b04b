"""Cold start: popular items for shoppers the model cannot score yet, personalised by what is known.

A shopper known to the lake (any clean order) without a single reorder candidate the model scored
(a first order whose lines have not arrived, a brand-new user in the latest batch, or a history of
products no longer sold) would otherwise get no list, and the API would answer 404. They get a
fallback tier instead, flagged `source = 'popular'`, appended after whatever they already have
(their explore items, if any), up to `max_rank` rows so that a filtered answer still fills k.

The score is the product's basket rate (share of the history's baskets holding it) times how much
more the shopper buys from its department than everyone does, smoothed towards the overall mix:

    P(product in basket | shopper) ~ rate(p) * (n_ud / share_d + prior) / (n_u + prior)

where n_ud are the shopper's known lines in department d, n_u all their known lines and share_d the
department's share of all lines. A shopper with no known lines (n_u = 0) gets the overall popularity
exactly, and the departments a shopper has no lines in keep their overall order (the factor is the
same for all of them); the lines of a first basket tilt the list towards its departments. Every
factor comes from integer counts, so a rerun gives the same doubles, and ties break on product id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import StagedParquet, copy_to_parquet, create_view, scalar

MAX_RANK = 52  # what a warm user's list holds: top 10, 2 explore items, candidates 11..50
PRIOR_LINES = 5  # pseudo-lines of the overall department mix a shopper's own lines are blended with
POPULAR = "popular"

# The users in scope known to the lake's orders without a `model` row in the recommendations ($recommendations).
COLD_USERS_SQL = """
SELECT DISTINCT user_id FROM cold_start_orders
ANTI JOIN (
    SELECT user_id FROM read_parquet($recommendations, hive_partitioning = false) WHERE source = 'model'
) AS warm USING (user_id)
WHERE user_id IN (SELECT user_id FROM cold_start_scope)
"""

# A candidate of a cold user is among the `depth` most popular products overall (the order of every
# department the user has no lines in) or of a department they bought from: the top `max_rank` of
# the score can come from nowhere else, even after removing what is already on their list.
COLD_START_SQL = """
WITH catalog AS (
    SELECT product_id, product_name, aisle_id, department_id
    FROM read_parquet($products, hive_partitioning = false)
    WHERE is_current
),
served AS (
    SELECT * FROM read_parquet($recommendations, hive_partitioning = false)
),
cold AS (SELECT user_id FROM cold_start_cold),
lines AS (
    SELECT DISTINCT l.order_id, l.product_id, catalog.department_id
    FROM cold_start_lines AS l JOIN catalog USING (product_id)
),
basket_count AS (
    SELECT count(DISTINCT order_id) AS n FROM lines
),
popularity AS (
    SELECT product_id, department_id, count(*) AS baskets FROM lines GROUP BY ALL
),
department_share AS (
    SELECT department_id, sum(baskets)::DOUBLE / (SELECT sum(baskets) FROM popularity) AS share
    FROM popularity GROUP BY ALL
),
user_mix AS (
    SELECT o.user_id, lines.department_id, count(*) AS n
    FROM cold_start_orders AS o
    SEMI JOIN cold USING (user_id)
    JOIN lines USING (order_id)
    GROUP BY ALL
),
user_lines AS (
    SELECT user_id, sum(n) AS n FROM user_mix GROUP BY ALL
),
department_top AS (
    SELECT product_id, department_id, baskets
    FROM popularity
    QUALIFY row_number() OVER (PARTITION BY department_id ORDER BY baskets DESC, product_id) <= $depth
),
overall_top AS (
    SELECT product_id, department_id, baskets FROM popularity ORDER BY baskets DESC, product_id LIMIT $depth
),
candidates AS (
    SELECT cold.user_id, t.product_id, t.department_id, t.baskets FROM cold CROSS JOIN overall_top AS t
    UNION
    SELECT user_mix.user_id, t.product_id, t.department_id, t.baskets
    FROM user_mix JOIN department_top AS t USING (department_id)
),
scored AS (
    SELECT c.user_id, c.product_id,
           least(1.0, c.baskets::DOUBLE / (SELECT n FROM basket_count)
               * (coalesce(m.n, 0) / d.share + $prior_lines) / (coalesce(u.n, 0) + $prior_lines)
           ) AS probability
    FROM candidates AS c
    JOIN department_share AS d USING (department_id)
    LEFT JOIN user_mix AS m USING (user_id, department_id)
    LEFT JOIN user_lines AS u USING (user_id)
    ANTI JOIN served USING (user_id, product_id)
),
listed AS (
    SELECT user_id, max(rank) AS n FROM served SEMI JOIN cold USING (user_id) GROUP BY ALL
),
popular AS (
    SELECT s.user_id,
           coalesce(listed.n, 0)
             + row_number() OVER (PARTITION BY s.user_id ORDER BY s.probability DESC, s.product_id) AS rank,
           s.product_id, s.probability
    FROM scored AS s LEFT JOIN listed USING (user_id)
    QUALIFY rank <= $max_rank
)
SELECT user_id, rank, product_id, product_name, aisle, department, probability, explore, model_version, source
FROM served
UNION ALL
SELECT popular.user_id, popular.rank::TINYINT, popular.product_id, catalog.product_name, aisles.aisle,
       departments.department, popular.probability::DOUBLE, false, $model_version, '{popular}'
FROM popular
JOIN catalog USING (product_id)
LEFT JOIN read_parquet($aisles, hive_partitioning = false) AS aisles USING (aisle_id)
LEFT JOIN read_parquet($departments, hive_partitioning = false) AS departments USING (department_id)
ORDER BY user_id, rank
""".replace("{popular}", POPULAR)


@dataclass(frozen=True)
class ColdStartInputs:
    """The lake tables the popular tier reads (URIs; the order tables one per batch of history)."""

    orders: Sequence[str]  # clean_orders: who is known to the lake
    order_products: Sequence[str]  # clean_order_products: what was bought, first baskets included
    products: str
    aisles: str
    departments: str
    # A parquet file whose user_id column limits who may get the tier (a delta batch's affected
    # users); None: every user of the orders.
    users: str | None = None


def with_popular_tier(
    conn: duckdb.DuckDBPyConnection,
    recommendations_uri: str,
    inputs: ColdStartInputs,
    model_version: str,
    out_path: Path,
    max_rank: int = MAX_RANK,
    prior_lines: float = PRIOR_LINES,
) -> StagedParquet:
    """The recommendations (with their `source` column) plus a popular tier for every user of the
    lake's orders (of `inputs.users` when given) who has no `model` row: their rows after what they have, up to `max_rank`, current
    products only, never one already on their list."""
    if max_rank < 1:
        raise ValueError(f"cold start: max_rank must be at least 1, got {max_rank}")
    if prior_lines <= 0:
        raise ValueError(f"cold start: prior_lines must be positive, got {prior_lines}")
    create_view(conn, "cold_start_orders", inputs.orders, CLEAN_ORDERS_SCHEMA)
    scope = (
        conn.read_parquet(inputs.users, hive_partitioning=False).project("user_id")
        if inputs.users is not None
        else conn.sql("SELECT DISTINCT user_id FROM cold_start_orders")
    )
    scope.create_view("cold_start_scope", replace=True)
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE cold_start_cold AS {COLD_USERS_SQL}",
        {"recommendations": recommendations_uri},
    )
    cold_users = int(scalar(conn, "SELECT count(*) FROM cold_start_cold"))
    # Nobody cold (a delta batch of known shoppers, usually): the same query over no lines, instead of
    # counting every basket of the history for a tier nobody gets.
    lines = inputs.order_products if cold_users else []
    create_view(conn, "cold_start_lines", lines, CLEAN_ORDER_PRODUCTS_SCHEMA)
    params = {
        "recommendations": recommendations_uri,
        "products": inputs.products,
        "aisles": inputs.aisles,
        "departments": inputs.departments,
        "model_version": model_version,
        "max_rank": int(max_rank),
        "depth": 2 * int(max_rank),
        "prior_lines": float(prior_lines),
    }
    return copy_to_parquet(conn, COLD_START_SQL, out_path, params=params)
