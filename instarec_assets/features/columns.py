"""The model's input columns, in order, each with the one-line definition the metadata shows.

"History" is the framing's past: for `training_set` and the `test` rows of `inference_set`, every
order of the user before the target order (the user's highest order_number); for `serving` rows,
every order including the target when its lines are known. "Target" is the order being predicted.
"""

from __future__ import annotations

USER_FEATURES: dict[str, str] = {
    "u_orders": "number of history orders",
    "u_items": "order lines (items) over the history",
    "u_basket_mean": "mean basket size over history orders whose lines are known",
    "u_reorder_ratio": "share of lines flagged reordered, over history orders after the first",
    "u_days_between_mean": "mean days_since_prior_order over history orders after the first",
    "u_days_between_std": "population std of days_since_prior_order over history orders after the first",
    "u_days_span": "days from the first to the last history order",
    "u_distinct_products": "distinct products bought in the history",
    "u_distinct_share": "distinct products / items",
    "u_usual_dow": "most frequent order_dow of history orders (ties: lowest day)",
    "u_usual_hour": "median order_hour_of_day of history orders",
}
PRODUCT_FEATURES: dict[str, str] = {
    "p_orders": "times the product was bought in all users' history lines",
    "p_buyers": "distinct users who bought it in their history",
    "p_reorder_prob": "share of its buyers who bought it at least twice",
    "p_reorder_ratio": "share of its purchases flagged reordered",
    "p_purchases_per_buyer": "p_orders / p_buyers",
    "p_cart_mean": "mean add_to_cart_order",
    "p_orders_between_mean": "mean orders between consecutive purchases, pooled over its rebuyers",
    "p_aisle_id": "current aisle_id (a number to XGBoost)",
    "p_department_id": "current department_id (a number to XGBoost)",
}
USER_PRODUCT_FEATURES: dict[str, str] = {
    "up_orders": "history orders that contained the product",
    "up_rate": "up_orders / u_orders",
    "up_rate_since_first": "up_orders / history orders since (and including) the first purchase",
    "up_first_order": "position (1 = first) of the first history order containing it",
    "up_last_order": "position of the last history order containing it",
    "up_orders_since_last": "history orders after the last purchase (0: bought in the latest one)",
    "up_days_since_last": "days from the last purchase to the target order (later gaps + the target's gap)",
    "up_days_between_mean": "mean days between its purchases (first to last purchase / (up_orders - 1))",
    "up_streak": "consecutive most recent history orders containing it (counted over the last 63)",
    "up_in_last_1": "bought in the latest history order (0/1)",
    "up_in_last_3": "how many of the 3 latest history orders contained it",
    "up_in_last_5": "how many of the 5 latest history orders contained it",
    "up_cart_mean": "mean add_to_cart_order of its purchases",
    "up_reorder_share": "share of its purchases flagged reordered",
    "up_hour_diff": "circular hour distance between the target hour and the mean hour it was bought",
    "ua_item_share": "share of the user's items in the product's aisle",
    "ud_item_share": "share of the user's items in the product's department",
}
TARGET_FEATURES: dict[str, str] = {
    "t_dow": "target order's order_dow (serving: u_usual_dow)",
    "t_hour": "target order's order_hour_of_day (serving: u_usual_hour)",
    "t_days_since_prior": "target order's days_since_prior_order (serving: rounded u_days_between_mean)",
}

FEATURES: dict[str, str] = USER_FEATURES | PRODUCT_FEATURES | USER_PRODUCT_FEATURES | TARGET_FEATURES
FEATURE_COLUMNS: tuple[str, ...] = tuple(FEATURES)

# NULL (NaN once loaded as floats; XGBoost treats it as missing) only where the quantity is undefined.
NULLABLE_FEATURES: dict[str, str] = {
    "u_reorder_ratio": "no lines after the user's first history order",
    "u_days_between_mean": "a single history order (no gap yet)",
    "u_days_between_std": "a single history order (no gap yet)",
    "up_days_between_mean": "the product was bought once",
    "p_orders_between_mean": "no user bought the product twice",
}
