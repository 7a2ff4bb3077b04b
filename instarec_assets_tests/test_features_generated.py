"""Feature sets on the synthetic generator's output, loaded into clean-zone-shaped parquet with DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from instarec_assets.features import FEATURE_COLUMNS, CleanSnapshot, build_features
from instarec_assets.features.columns import USER_FEATURES

ORDERS_SQL = """
SELECT order_id::INTEGER AS order_id, user_id::INTEGER AS user_id, eval_set,
       order_number::SMALLINT AS order_number, order_dow::TINYINT AS order_dow,
       order_hour_of_day::TINYINT AS order_hour_of_day,
       nullif(days_since_prior_order, '')::DOUBLE::TINYINT AS days_since_prior_order,
       'orders.csv' AS _source_file, now() AS _ingested_at
FROM read_csv('{folder}/orders.csv', header = true, all_varchar = true)
"""
LINES_SQL = """
SELECT order_id::INTEGER AS order_id, product_id::INTEGER AS product_id,
       add_to_cart_order::SMALLINT AS add_to_cart_order, reordered::TINYINT AS reordered,
       '{kind}' AS eval_set, 'order_products__{kind}.csv' AS _source_file, now() AS _ingested_at
FROM read_csv('{folder}/order_products__{kind}.csv', header = true, all_varchar = true)
"""
PRODUCTS_SQL = """
SELECT product_id::INTEGER AS product_id, product_name, aisle_id::INTEGER AS aisle_id,
       department_id::INTEGER AS department_id, DATE '{day}' AS valid_from, NULL::DATE AS valid_to,
       true AS is_current, 'products.csv' AS _source_file, now() AS _ingested_at
FROM read_csv('{folder}/products.csv', header = true, all_varchar = true)
"""
PARQUET = "read_parquet(?, hive_partitioning = false)"
DIMENSION_SQL = """
SELECT {key}::INTEGER AS {key}, {name}, DATE '{day}' AS updated_on
FROM read_csv('{folder}/{table}.csv', header = true, all_varchar = true)
"""


def clean_snapshot_from_landing(landing: Path, lake: Path) -> CleanSnapshot:
    """Every dated landing folder as one clean partition (hive-style paths), catalog from the last one."""
    return clean_snapshots_from_landing(landing, lake)[-1]


def clean_snapshots_from_landing(landing: Path, lake: Path) -> list[CleanSnapshot]:
    """The clean snapshot as of each dated landing folder: its orders and lines partitions and every
    earlier one, the catalog from that folder (each partition written once)."""
    folders = sorted(folder for folder in landing.iterdir() if folder.is_dir())
    conn = duckdb.connect()
    orders, lines, snapshots = [], [], []
    for folder in folders:
        orders.append(_copy(conn, ORDERS_SQL.format(folder=folder), lake, "clean_orders", folder.name))
        union = " UNION ALL ".join(LINES_SQL.format(folder=folder, kind=kind) for kind in ("prior", "train"))
        lines.append(_copy(conn, union, lake, "clean_order_products", folder.name))
        day = folder.name
        snapshots.append(
            CleanSnapshot(
                orders=list(orders),
                order_products=list(lines),
                products=_copy(
                    conn, PRODUCTS_SQL.format(folder=folder, day=day), lake, "clean_products", day
                ),
                aisles=_copy(
                    conn,
                    DIMENSION_SQL.format(
                        key="aisle_id", name="aisle", table="aisles", folder=folder, day=day
                    ),
                    lake,
                    "clean_aisles",
                    day,
                ),
                departments=_copy(
                    conn,
                    DIMENSION_SQL.format(
                        key="department_id", name="department", table="departments", folder=folder, day=day
                    ),
                    lake,
                    "clean_departments",
                    day,
                ),
            )
        )
    conn.close()
    return snapshots


def _copy(conn: duckdb.DuckDBPyConnection, sql: str, lake: Path, table: str, day: str) -> str:
    year, month, dom = day.split("-")
    path = lake / table / f"year={year}" / f"month={month}" / f"day={dom}" / f"{table}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet)")
    return str(path)


def test_features_on_generated_data(tmp_path: Path) -> None:
    generate = pytest.importorskip("instarec_assets.generate")
    generate.generate_dataset(tmp_path / "landing", users=200, seed=0, batches=2)
    snapshot = clean_snapshot_from_landing(tmp_path / "landing", tmp_path / "lake")
    with duckdb.connect() as conn:
        tables = build_features(conn, snapshot, tmp_path / "scratch")
        training = tables.training_set.path
        inference = tables.inference_set.path
        train_users, rows, label_rate = conn.execute(
            f"SELECT count(DISTINCT user_id), count(*), avg(label) FROM {PARQUET}",
            [str(training)],
        ).fetchall()[0]
        user_nulls = conn.execute(
            "SELECT "
            + ", ".join(f"count(*) FILTER (WHERE {c} IS NULL OR isnan({c}::DOUBLE))" for c in USER_FEATURES)
            + f" FROM {PARQUET}",
            [str(training)],
        ).fetchall()[0]
        kinds = dict(
            conn.execute(
                f"SELECT eval_set, count(DISTINCT user_id) FROM {PARQUET} GROUP BY eval_set",
                [str(inference)],
            ).fetchall()
        )
        users_with_history = conn.execute(
            "SELECT count(DISTINCT o.user_id) FROM read_parquet(?, hive_partitioning = false) AS o"
            " JOIN read_parquet(?, hive_partitioning = false) AS l USING (order_id)",
            [list(snapshot.orders), list(snapshot.order_products)],
        ).fetchall()[0][0]
        stats, correlation = tables.summary(conn)
    assert rows == tables.training_set.row_count > 1000
    assert train_users > 50
    assert 0.05 <= label_rate <= 0.2
    assert user_nulls == (0,) * len(USER_FEATURES), dict(zip(USER_FEATURES, user_nulls, strict=True))
    assert kinds["test"] > 20 and kinds["serving"] == users_with_history
    assert all(column in stats for column in FEATURE_COLUMNS)
    assert "pearson_with_label" in correlation
