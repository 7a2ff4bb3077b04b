"""User x product features: what each user bought in the history, and when, relative to the target.

`build_purchases` aggregates history lines once per (framing, user, product) into raw counts and sums
(feat_up); the user, product and affinity tables are derived from it, and USER_PRODUCT_SELECT turns it
into features against the target row. The last 63 history orders are kept as a bit mask (bit 0 = the
latest) so the streak and the "bought in the last k orders" counts are bit operations, not windows.
"""

from __future__ import annotations

import duckdb

from instarec_assets.features.targets import FRAMINGS

RECENT_ORDERS = 63

PURCHASES_SCHEMA_SQL = """
CREATE OR REPLACE TEMP TABLE feat_up (
    framing VARCHAR, user_id INTEGER, product_id INTEGER, aisle_id INTEGER, department_id INTEGER,
    n SMALLINT, first_seq SMALLINT, last_seq SMALLINT, recent_mask UBIGINT, cart_sum INTEGER,
    reordered_sum SMALLINT, hour_sum INTEGER, first_cum INTEGER, last_cum INTEGER
)
"""

# One framing at a time (a constant, not a grouping key) keeps the hash table to one framing's pairs.
PURCHASES_SQL = """
INSERT INTO feat_up
SELECT $framing AS framing, a.user_id, a.product_id, c.aisle_id, c.department_id,
       a.* EXCLUDE (user_id, product_id)
FROM (
    SELECT h.user_id, l.product_id,
           count(*)::SMALLINT AS n,
           min(h.seq)::SMALLINT AS first_seq,
           max(h.seq)::SMALLINT AS last_seq,
           coalesce(bit_or(1::UBIGINT << h.orders_back) FILTER (WHERE h.orders_back < {recent}), 0::UBIGINT)
             AS recent_mask,
           sum(l.add_to_cart_order)::INTEGER AS cart_sum,
           sum(l.reordered)::SMALLINT AS reordered_sum,
           sum(h.order_hour_of_day)::INTEGER AS hour_sum,
           min(h.cum_days)::INTEGER AS first_cum,
           max(h.cum_days)::INTEGER AS last_cum
    FROM feat_clean_lines AS l
    JOIN feat_history AS h ON h.order_id = l.order_id AND h.framing = $framing
    GROUP BY h.user_id, l.product_id
) AS a
LEFT JOIN feat_catalog AS c USING (product_id)
"""

# Items per user in each aisle and department (the product's current ones).
AFFINITY_SQL = """
CREATE OR REPLACE TEMP TABLE feat_user_{level} AS
SELECT framing, user_id, {level}_id, sum(n)::INTEGER AS items
FROM feat_up
GROUP BY framing, user_id, {level}_id
"""

# trailing ones of m = bit_count(m & ~(m + 1)); m < 2^63, so m + 1 cannot overflow.
USER_PRODUCT_SELECT = """
SELECT u.framing, u.user_id, u.product_id,
       u.n AS up_orders,
       (u.n / f.hist_orders)::FLOAT AS up_rate,
       (u.n / (f.hist_orders - u.first_seq + 1))::FLOAT AS up_rate_since_first,
       u.first_seq AS up_first_order,
       u.last_seq AS up_last_order,
       (f.hist_orders - u.last_seq)::SMALLINT AS up_orders_since_last,
       (s.u_days_span - u.last_cum + f.t_days_since_prior)::INTEGER AS up_days_since_last,
       ((u.last_cum - u.first_cum) / nullif(u.n - 1, 0))::FLOAT AS up_days_between_mean,
       bit_count(u.recent_mask & ~(u.recent_mask + 1))::SMALLINT AS up_streak,
       bit_count(u.recent_mask & 1::UBIGINT)::SMALLINT AS up_in_last_1,
       bit_count(u.recent_mask & 7::UBIGINT)::SMALLINT AS up_in_last_3,
       bit_count(u.recent_mask & 31::UBIGINT)::SMALLINT AS up_in_last_5,
       (u.cart_sum / u.n)::FLOAT AS up_cart_mean,
       (u.reordered_sum / u.n)::FLOAT AS up_reorder_share,
       least(abs(f.t_hour - u.hour_sum / u.n), 24 - abs(f.t_hour - u.hour_sum / u.n))::FLOAT AS up_hour_diff,
       (a.items / s.u_items)::FLOAT AS ua_item_share,
       (d.items / s.u_items)::FLOAT AS ud_item_share
FROM feat_up AS u
JOIN feat_frames AS f USING (framing, user_id)
JOIN feat_user AS s USING (framing, user_id)
LEFT JOIN feat_user_aisle AS a USING (framing, user_id, aisle_id)
LEFT JOIN feat_user_department AS d USING (framing, user_id, department_id)
ORDER BY u.framing, u.user_id, u.product_id
"""


def build_purchases(conn: duckdb.DuckDBPyConnection) -> None:
    """feat_up: raw per-(framing, user, product) aggregates of history lines."""
    conn.execute(PURCHASES_SCHEMA_SQL)
    for framing in FRAMINGS:
        conn.execute(PURCHASES_SQL.format(recent=RECENT_ORDERS), {"framing": framing})


def build_affinity(conn: duckdb.DuckDBPyConnection) -> None:
    """feat_user_aisle and feat_user_department: the user's items per aisle and department."""
    for level in ("aisle", "department"):
        conn.execute(AFFINITY_SQL.format(level=level))
