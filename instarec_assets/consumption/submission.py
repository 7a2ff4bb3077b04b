"""Next baskets for the Kaggle `test` orders and the submission file format (`order_id,products`)."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import pyarrow as pa

from instarec_assets.ml.baskets import select_baskets

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


def next_baskets(conn: duckdb.DuckDBPyConnection, predictions_uri: str) -> pa.Table:
    """The expected-F1-optimal basket of every `test` order, in the Kaggle products format."""
    rows = conn.execute(
        "SELECT order_id, user_id, product_id, probability FROM read_parquet(?, hive_partitioning = false) "
        "WHERE eval_set = 'test' ORDER BY order_id",
        [predictions_uri],
    ).fetchnumpy()
    if len(rows["order_id"]) == 0:
        return BASKETS_SCHEMA.empty_table()
    selection = select_baskets(rows["order_id"], rows["product_id"], rows["probability"])
    strings = selection.kaggle_strings()
    users = dict(zip(rows["order_id"].tolist(), rows["user_id"].tolist(), strict=True))
    order_ids = selection.order_ids.tolist()
    return pa.table(
        {
            "order_id": pa.array(order_ids, pa.int32()),
            "user_id": pa.array([users[order] for order in order_ids], pa.int32()),
            "products": pa.array([strings[order] for order in order_ids], pa.string()),
            "n_products": pa.array(selection.n_products, pa.int16()),
            "include_none": pa.array(selection.include_none, pa.bool_()),
            "expected_f1": pa.array(selection.expected_f1, pa.float32()),
        },
        schema=BASKETS_SCHEMA,
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
