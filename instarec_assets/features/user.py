"""User features: order habits over the history of each framing."""

from __future__ import annotations

import duckdb

# Needs feat_history and feat_up (distinct products).
USER_SQL = """
CREATE OR REPLACE TEMP TABLE feat_user AS
WITH day_counts AS (
    SELECT framing, user_id, order_dow, count(*) AS n
    FROM feat_history
    GROUP BY framing, user_id, order_dow
),
usual_day AS (
    SELECT framing, user_id, first(order_dow ORDER BY n DESC, order_dow) AS u_usual_dow
    FROM day_counts
    GROUP BY framing, user_id
),
distinct_products AS (
    SELECT framing, user_id, count(*) AS products
    FROM feat_up
    GROUP BY framing, user_id
),
orders AS (
    SELECT framing, user_id,
           count(*) AS orders,
           sum(n_lines) AS items,
           count(*) FILTER (WHERE n_lines > 0) AS orders_with_lines,
           sum(n_reordered) FILTER (WHERE seq > 1) AS reordered_after_first,
           sum(n_lines) FILTER (WHERE seq > 1) AS items_after_first,
           avg(days_since_prior_order) FILTER (WHERE seq > 1) AS days_mean,
           stddev_pop(days_since_prior_order) FILTER (WHERE seq > 1) AS days_std,
           max(cum_days) AS days_span,
           quantile_disc(order_hour_of_day, 0.5) AS usual_hour
    FROM feat_history
    GROUP BY framing, user_id
)
SELECT o.framing, o.user_id,
       o.orders::SMALLINT AS u_orders,
       o.items::INTEGER AS u_items,
       (o.items / nullif(o.orders_with_lines, 0))::FLOAT AS u_basket_mean,
       (o.reordered_after_first / nullif(o.items_after_first, 0))::FLOAT AS u_reorder_ratio,
       o.days_mean::FLOAT AS u_days_between_mean,
       o.days_std::FLOAT AS u_days_between_std,
       o.days_span::INTEGER AS u_days_span,
       coalesce(p.products, 0)::INTEGER AS u_distinct_products,
       (coalesce(p.products, 0) / nullif(o.items, 0))::FLOAT AS u_distinct_share,
       d.u_usual_dow::TINYINT AS u_usual_dow,
       o.usual_hour::TINYINT AS u_usual_hour
FROM orders AS o
JOIN usual_day AS d USING (framing, user_id)
LEFT JOIN distinct_products AS p USING (framing, user_id)
"""

USER_FEATURES_SELECT = """
SELECT f.framing, f.user_id, f.target_order_id, f.target_set, f.t_dow, f.t_hour, f.t_days_since_prior,
       u.* EXCLUDE (framing, user_id)
FROM feat_frames AS f
JOIN feat_user AS u USING (framing, user_id)
ORDER BY f.framing, f.user_id
"""


def build_users(conn: duckdb.DuckDBPyConnection) -> None:
    """feat_user: one row per (framing, user) with history."""
    conn.execute(USER_SQL)
