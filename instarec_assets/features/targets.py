"""Roles of orders: per user, the target order and the history before it, in three framings.

The stored eval_set is not trusted (a user's orders arrive over several batches): the order with the
highest order_number is the target, `train` when its lines are known and `test` otherwise.

- framing `target` (training_set and the Kaggle `test` rows): history = every earlier order; the
  target row (dow, hour, days_since_prior_order) is known, its lines never enter a feature.
- framing `serving` (the next, future order): history = every order, the target included when its
  lines are known; the future order's row is unknown, so `fill_serving_targets` puts the user's
  usual values there (most frequent dow, median hour, mean days between orders rounded, or the mean
  gap over all users when the user has a single history order).
- framing `earlier` (extra training targets): the target is the order before the target framing's
  target (when it has lines), the history every order before that. Every such user gets the framing,
  so its product features aggregate the same population as the other framings'; only users with at
  most EARLIER_TARGET_MAX_HISTORY history orders add training rows (features/sets.py).

A history order whose lines never arrived (an old `test` order) still counts as an order, with no lines.
"""

from __future__ import annotations

import duckdb

FRAMINGS = ("target", "serving", "earlier")
# training_set's eval_set of the earlier framing's rows: they train the model, never validate it.
EARLIER_EVAL_SET = "train_earlier"
# Short histories gain most from a second target (their one target order is a noisy label) and cost
# least. At full size a limit of 10 added 47% training rows and doubled the fit for no measurable
# F1 (bench/RESULTS.md); 5 keeps the shortest histories at about a fifth more rows.
EARLIER_TARGET_MAX_HISTORY = 5

# seq renumbers each user's orders 1..n (robust to gaps in order_number); cum_days is the running sum
# of days_since_prior_order, so the days between two orders are a difference of cum_days.
ORDERS_SQL = """
CREATE OR REPLACE TEMP TABLE feat_orders AS
WITH sizes AS (
    SELECT order_id, count(*) AS n_lines, sum(reordered) AS n_reordered
    FROM feat_clean_lines
    GROUP BY order_id
),
sequenced AS (
    SELECT order_id, user_id, order_dow, order_hour_of_day, days_since_prior_order,
           row_number() OVER by_user AS seq,
           sum(coalesce(days_since_prior_order, 0)) OVER by_user AS cum_days
    FROM feat_clean_orders
    WINDOW by_user AS (PARTITION BY user_id ORDER BY order_number)
)
SELECT s.order_id, s.user_id, s.seq::SMALLINT AS seq,
       (max(s.seq) OVER (PARTITION BY s.user_id))::SMALLINT AS last_seq,
       s.order_dow, s.order_hour_of_day, s.days_since_prior_order, s.cum_days::INTEGER AS cum_days,
       coalesce(z.n_lines, 0)::SMALLINT AS n_lines, coalesce(z.n_reordered, 0)::SMALLINT AS n_reordered
FROM sequenced AS s
LEFT JOIN sizes AS z USING (order_id)
"""

# One row per user and framing that has at least one history order.
FRAMES_SQL = """
CREATE OR REPLACE TEMP TABLE feat_frames AS
SELECT 'target' AS framing, user_id, (seq - 1)::SMALLINT AS hist_orders,
       order_id AS target_order_id,
       CASE WHEN n_lines > 0 THEN 'train' ELSE 'test' END AS target_set,
       order_dow AS t_dow, order_hour_of_day AS t_hour, days_since_prior_order AS t_days_since_prior
FROM feat_orders
WHERE seq = last_seq AND seq > 1
UNION ALL
SELECT 'serving' AS framing, user_id,
       (CASE WHEN n_lines > 0 THEN seq ELSE seq - 1 END)::SMALLINT AS hist_orders,
       NULL::INTEGER AS target_order_id, NULL::VARCHAR AS target_set,
       NULL::TINYINT AS t_dow, NULL::TINYINT AS t_hour, NULL::TINYINT AS t_days_since_prior
FROM feat_orders
WHERE seq = last_seq AND (n_lines > 0 OR seq > 1)
UNION ALL
SELECT 'earlier' AS framing, user_id, (seq - 1)::SMALLINT AS hist_orders,
       order_id AS target_order_id, 'train' AS target_set,
       order_dow AS t_dow, order_hour_of_day AS t_hour, days_since_prior_order AS t_days_since_prior
FROM feat_orders
WHERE seq = last_seq - 1 AND seq > 1 AND n_lines > 0
"""

# orders_back: 0 for the latest history order, 1 for the one before, ...
HISTORY_SQL = """
CREATE OR REPLACE TEMP TABLE feat_history AS
SELECT f.framing, o.user_id, o.order_id, o.seq, (f.hist_orders - o.seq)::SMALLINT AS orders_back,
       o.order_dow, o.order_hour_of_day, o.days_since_prior_order, o.cum_days, o.n_lines, o.n_reordered
FROM feat_orders AS o
JOIN feat_frames AS f ON f.user_id = o.user_id AND o.seq <= f.hist_orders
"""

# The lines of the train target orders (both labelled framings): only the label reads them.
TARGET_LINES_SQL = """
CREATE OR REPLACE TEMP TABLE feat_target_lines AS
SELECT l.order_id, l.product_id
FROM feat_clean_lines AS l
JOIN feat_frames AS f
  ON f.framing IN ('target', 'earlier') AND f.target_set = 'train' AND f.target_order_id = l.order_id
"""

# The fallback gap is global: the mean over every order of every user (`all_orders`), so an incremental
# update that recomputes only some users passes a view over the whole history instead of feat_orders.
SERVING_TARGETS_SQL = """
UPDATE feat_frames AS f
SET t_dow = u.u_usual_dow,
    t_hour = u.u_usual_hour,
    t_days_since_prior = coalesce(
        round(u.u_days_between_mean),
        (SELECT round(avg(days_since_prior_order)) FROM {all_orders})
    )::TINYINT
FROM feat_user AS u
WHERE f.framing = 'serving' AND u.framing = 'serving' AND u.user_id = f.user_id
"""


def build_roles(conn: duckdb.DuckDBPyConnection) -> None:
    """Tables feat_orders, feat_frames, feat_history and feat_target_lines."""
    for sql in (ORDERS_SQL, FRAMES_SQL, HISTORY_SQL, TARGET_LINES_SQL):
        conn.execute(sql)


def fill_serving_targets(conn: duckdb.DuckDBPyConnection, all_orders: str = "feat_orders") -> None:
    """The future order's row for serving: the user's usual values (needs feat_user).

    all_orders: the relation whose days_since_prior_order gives the global fallback gap; feat_orders when
    every user is built, a view over the whole clean history when only some users are.
    """
    conn.execute(SERVING_TARGETS_SQL.format(all_orders=all_orders))
