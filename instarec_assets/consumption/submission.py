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
import numpy as np
import pyarrow as pa

from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import create_view
from instarec_assets.ml.baskets import NONE, select_baskets

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
QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY order_number DESC) = 1 AND eval_set = 'test'
"""

CANDIDATES_SQL = """
SELECT p.order_id, p.product_id, p.probability
FROM read_parquet($uri, hive_partitioning = false) AS p
SEMI JOIN submission_test_orders AS t USING (order_id)
WHERE p.eval_set = 'test'
"""

# Scored `test` rows whose order is not a clean `test` order (its lines went missing, say): left out.
SCORED_NOT_TEST_SQL = """
SELECT count(DISTINCT p.order_id)
FROM read_parquet($uri, hive_partitioning = false) AS p
ANTI JOIN submission_test_orders AS t USING (order_id)
WHERE p.eval_set = 'test'
"""


@dataclass(frozen=True)
class NextBaskets:
    """One row per `test` order (BASKETS_SCHEMA, by order_id), and what the metadata reports."""

    table: pa.Table
    without_candidates: int
    scored_not_test: int


def next_baskets(
    conn: duckdb.DuckDBPyConnection, predictions_uri: str, clean_orders: Sequence[str]
) -> NextBaskets:
    """The expected-F1-optimal basket of every `test` order in `clean_orders` (the clean orders
    partitions as of the predictions' partition), in the Kaggle products format; `None` for an order
    without candidates in `predictions_uri`."""
    create_view(conn, "submission_orders", clean_orders, CLEAN_ORDERS_SCHEMA)
    conn.execute(TEST_ORDERS_SQL)
    orders = conn.execute(
        "SELECT order_id, user_id FROM submission_test_orders ORDER BY order_id"
    ).fetchnumpy()
    params = {"uri": predictions_uri}
    scored_not_test = int(conn.execute(SCORED_NOT_TEST_SQL, params).fetchone()[0])
    rows = conn.execute(CANDIDATES_SQL, params).fetchnumpy()
    order_ids = np.asarray(orders["order_id"], dtype=np.int64)
    selection = select_baskets(rows["order_id"], rows["product_id"], rows["probability"])
    strings = selection.kaggle_strings()
    position = np.searchsorted(selection.order_ids, order_ids)
    found = position < len(selection.order_ids)
    found[found] = selection.order_ids[position[found]] == order_ids[found]
    at = np.where(found, position, 0)

    def per_order(values: np.ndarray, missing: object) -> np.ndarray:
        return np.where(found, values[at], missing) if len(values) else np.full(len(order_ids), missing)

    table = pa.table(
        {
            "order_id": pa.array(order_ids, pa.int32()),
            "user_id": pa.array(orders["user_id"], pa.int32()),
            "products": pa.array([strings.get(order, NONE) for order in order_ids.tolist()], pa.string()),
            "n_products": pa.array(per_order(selection.n_products, 0), pa.int16()),
            "include_none": pa.array(per_order(selection.include_none, True).astype(bool), pa.bool_()),
            "expected_f1": pa.array(per_order(selection.expected_f1, 1.0), pa.float32()),
        },
        schema=BASKETS_SCHEMA,
    )
    return NextBaskets(table, without_candidates=int((~found).sum()), scored_not_test=scored_not_test)


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
