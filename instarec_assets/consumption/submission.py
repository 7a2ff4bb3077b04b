"""Next baskets for the Kaggle `test` orders and the submission file format (`order_id,products`).

The orders to predict come from the clean zone, not from the scored candidates: a `test` order whose
user has no candidate (no earlier order with lines) has no row in reorder_predictions, yet Kaggle
expects a row for it. Such an order can hold no reordered product, so `None` is its prediction, and
it scores F1 1 under Kaggle's convention that `None` for an order without reorders is a hit.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from instarec_assets.consumption.deltas import create_latest_rows_view
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import create_view
from instarec_assets.ml.baskets import NONE, select_baskets
from instarec_assets.ml.none_probability import NoneCalibration, none_probabilities

BASKETS_SCHEMA = pa.schema(
    [
        ("order_id", pa.int32()),
        ("user_id", pa.int32()),
        ("products", pa.string()),
        ("n_products", pa.int16()),
        ("include_none", pa.bool_()),
        ("expected_f1", pa.float32()),
    ]
)

# A user's Kaggle `test` order is their latest order (highest order_number, as features/targets.py
# frames targets) when it is stored as `test`; an older `test` order is history once the user orders again.
TEST_ORDERS_SQL = """
CREATE OR REPLACE TEMP TABLE submission_test_orders AS
SELECT order_id, user_id
FROM submission_orders
{only_users}
QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY order_number DESC) = 1 AND eval_set = 'test'
"""

# The scored `test` rows, read from the predictions (the current rows of their chain) once.
SCORED_SQL = """
CREATE OR REPLACE TEMP TABLE submission_scored AS
SELECT order_id, product_id, probability
FROM submission_predictions
WHERE eval_set = 'test' {and_only_users}
"""

CANDIDATES_SQL = """
SELECT order_id, product_id, probability FROM submission_scored SEMI JOIN submission_test_orders USING (order_id)
"""

# Scored `test` rows whose order is not a clean `test` order (its lines went missing, say): left out.
SCORED_NOT_TEST_SQL = """
SELECT count(DISTINCT order_id) FROM submission_scored ANTI JOIN submission_test_orders USING (order_id)
"""

# Every test order, with its selected basket or, where it had no candidates, `None`.
BASKETS_SQL = f"""
SELECT t.order_id, t.user_id,
       coalesce(s.products, '{NONE}') AS products,
       coalesce(s.n_products, 0) AS n_products,
       coalesce(s.include_none, true) AS include_none,
       coalesce(s.expected_f1, 1.0) AS expected_f1
FROM submission_test_orders AS t
LEFT JOIN submission_selected AS s USING (order_id)
ORDER BY t.order_id
"""


# A carried batch recomputes the baskets of these users only: an order in the batch (a new `test`
# order, or one that became history) or rows in the newest predictions partition (re-scored). Every
# other user's test order and current prediction rows are those the previous batch's baskets used.
RECOMPUTED_USERS_SQL = """
CREATE OR REPLACE TEMP TABLE submission_users AS
SELECT user_id FROM read_parquet($batch_orders, hive_partitioning = false)
UNION
SELECT user_id FROM read_parquet($newest_predictions, hive_partitioning = false)
"""
RECOMPUTED_USERS = "submission_users"
ONLY_USERS = "user_id IN (SELECT user_id FROM submission_users)"

# The previous batch's rows of every other user (read once), then with the recomputed ones.
CARRIED_ROWS_SQL = """
CREATE OR REPLACE TEMP TABLE submission_carried AS
SELECT * FROM read_parquet($previous, hive_partitioning = false)
WHERE user_id NOT IN (SELECT user_id FROM submission_users)
"""
CARRIED_SQL = """
SELECT * FROM submission_carried
UNION ALL
SELECT * FROM submission_fresh
ORDER BY order_id
"""
# An order without candidates is stored as `None` with expected F1 1: a scored order reaches 1 only
# when every candidate's probability is 0, which a logistic output never is.
WITHOUT_CANDIDATES_SQL = f"""
SELECT count(*) FROM submission_carried WHERE products = '{NONE}' AND expected_f1 = 1.0
"""


@dataclass(frozen=True)
class NextBaskets:
    """One row per `test` order (BASKETS_SCHEMA, by order_id), and what the metadata reports."""

    table: pa.Table
    without_candidates: int
    scored_not_test: int
    # users whose baskets this selection computed (one test order each, unless carried)
    recomputed_users: int
    carried_orders: int = 0


def next_baskets(
    conn: duckdb.DuckDBPyConnection,
    predictions: str | Sequence[str],
    clean_orders: Sequence[str],
    none_calibration: NoneCalibration | None = None,
    only_recomputed_users: bool = False,
) -> NextBaskets:
    """The expected-F1-optimal basket of every `test` order in `clean_orders` (the clean orders
    partitions as of the predictions' partition), in the Kaggle products format; `None` for an order
    without candidates in the predictions: one partition's URI, or a chain of partitions (a full one,
    then deltas, oldest first) whose newest rows per user are read. `none_calibration` (the model's,
    when its held-out choice kept one) gives each order's P(None); else independence.
    `only_recomputed_users`: the orders of the users in `submission_users` (recomputed_users) only."""
    create_view(conn, "submission_orders", clean_orders, CLEAN_ORDERS_SCHEMA)
    conn.execute(TEST_ORDERS_SQL.format(only_users=f"WHERE {ONLY_USERS}" if only_recomputed_users else ""))
    chain = [str(uri) for uri in predictions] if isinstance(predictions, list | tuple) else [str(predictions)]
    create_latest_rows_view(conn, "submission_predictions", chain, keys=("user_id",))
    conn.execute(SCORED_SQL.format(and_only_users=f"AND {ONLY_USERS}" if only_recomputed_users else ""))
    scored_not_test = int(conn.execute(SCORED_NOT_TEST_SQL).fetchone()[0])
    rows = conn.execute(CANDIDATES_SQL).fetchnumpy()
    none_per_row = none_probabilities(
        pd.DataFrame({"order_id": rows["order_id"], "probability": rows["probability"]}), none_calibration
    )
    selection = select_baskets(rows["order_id"], rows["product_id"], rows["probability"], none_per_row)
    strings = selection.kaggle_strings()
    order_ids = selection.order_ids.tolist()
    selected = pa.table(
        {
            "order_id": pa.array(order_ids, pa.int64()),
            "products": pa.array([strings[order] for order in order_ids], pa.string()),
            "n_products": pa.array(selection.n_products, pa.int64()),
            "include_none": pa.array(selection.include_none, pa.bool_()),
            "expected_f1": pa.array(selection.expected_f1, pa.float64()),
        }
    )
    conn.register("submission_selected", selected)
    try:
        table = conn.sql(BASKETS_SQL).to_arrow_table().cast(BASKETS_SCHEMA)
    finally:
        conn.unregister("submission_selected")
    # every selected order is a test order (CANDIDATES_SQL keeps only those), so the rest had none
    return NextBaskets(
        table,
        without_candidates=table.num_rows - len(order_ids),
        scored_not_test=scored_not_test,
        recomputed_users=table.num_rows,
    )


def recomputed_users(conn: duckdb.DuckDBPyConnection, batch_orders: str, newest_predictions: str) -> int:
    """Fills `submission_users` with the users whose baskets a carried batch recomputes; their count."""
    conn.execute(
        RECOMPUTED_USERS_SQL, {"batch_orders": batch_orders, "newest_predictions": newest_predictions}
    )
    return int(conn.execute(f"SELECT count(*) FROM {RECOMPUTED_USERS}").fetchall()[0][0])


def carried_baskets(
    conn: duckdb.DuckDBPyConnection,
    previous: str,
    predictions: Sequence[str],
    clean_orders: Sequence[str],
    none_calibration: NoneCalibration | None = None,
) -> NextBaskets:
    """The baskets next_baskets gives for the chain `predictions`, from the previous batch's baskets
    (`previous`, built from the same chain less its newest partition, the same clean orders less this
    batch's and the same calibration): only the orders of recomputed_users (this batch's clean
    orders are the last of `clean_orders`) are selected again."""
    users = recomputed_users(conn, clean_orders[-1], predictions[-1])
    fresh = next_baskets(conn, predictions, clean_orders, none_calibration, only_recomputed_users=True)
    conn.execute(CARRIED_ROWS_SQL, {"previous": previous})
    carried_without = int(conn.execute(WITHOUT_CANDIDATES_SQL).fetchall()[0][0])
    conn.register("submission_fresh", fresh.table)
    try:
        table = conn.sql(CARRIED_SQL).to_arrow_table().cast(BASKETS_SCHEMA)
    finally:
        conn.unregister("submission_fresh")
        conn.execute("DROP TABLE submission_carried")
    return NextBaskets(
        table,
        without_candidates=fresh.without_candidates + carried_without,
        scored_not_test=fresh.scored_not_test,
        carried_orders=table.num_rows - fresh.table.num_rows,
        recomputed_users=users,
    )


def write_submission(conn: duckdb.DuckDBPyConnection, baskets_uri: str, out: Path) -> int:
    """Kaggle's format: a header, then `order_id,products` with space-separated ids or `None`."""
    rows = conn.execute(
        "SELECT order_id, products FROM read_parquet(?, hive_partitioning = false) ORDER BY order_id",
        [baskets_uri],
    ).fetchall()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["order_id", "products"])
        writer.writerows(rows)
    return len(rows)
