"""Next baskets and the Kaggle submission: one row for every `test` order of the clean zone, from real
parquet files read by DuckDB, whether or not the order's user has candidates to score."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.consumption.recommendations import PREDICTIONS_SCHEMA
from instarec_assets.consumption.submission import (
    BASKETS_SCHEMA,
    carried_baskets,
    next_baskets,
    recomputed_users,
    write_submission,
)
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.ml.baskets import expected_f1_basket

# (order_id, user_id, eval_set, order_number, order_dow, order_hour_of_day, days_since_prior_order)
DAY_1_ORDERS = [
    (101, 1, "prior", 1, 1, 9, None),
    (201, 2, "prior", 1, 2, 10, None),  # its lines never arrived: user 2 has no candidates
    (301, 3, "test", 1, 3, 11, None),  # a test user with a single order
    (401, 4, "test", 1, 4, 12, None),  # superseded on day 2: history, not a test order any more
    (601, 6, "prior", 1, 5, 8, None),
]
DAY_2_ORDERS = [
    (102, 1, "test", 2, 1, 9, 7),
    (202, 2, "test", 2, 2, 10, 14),
    (402, 4, "train", 2, 4, 12, 7),
    (501, 5, "train", 1, 0, 15, None),
    (602, 6, "prior", 2, 5, 8, 3),  # latest, but not `test`: scored as test (no lines), not submitted
]
USER_1_CANDIDATES = {11: 0.9, 12: 0.55, 13: 0.05}


def write_orders(conn: duckdb.DuckDBPyConnection, path: Path, rows: list[tuple]) -> str:
    """A clean_orders partition file with the exact clean schema (lineage columns included)."""
    conn.execute(f"CREATE OR REPLACE TEMP TABLE staged AS {CLEAN_ORDERS_SCHEMA}")
    for row in rows:
        conn.execute(
            "INSERT INTO staged VALUES (?, ?, ?, ?, ?, ?, ?, 'landing/orders.csv', now())", list(row)
        )
    conn.execute(f"COPY staged TO '{path}' (FORMAT parquet)")
    return str(path)


def write_predictions(path: Path, rows: list[tuple[int, int, int | None, str, float]]) -> str:
    """A reorder_predictions file: (user_id, product_id, order_id, eval_set, probability) rows."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in PREDICTIONS_SCHEMA]
    pq.write_table(
        pa.table(dict(zip(PREDICTIONS_SCHEMA.names, columns, strict=True)), PREDICTIONS_SCHEMA), path
    )
    return str(path)


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    yield connection
    connection.close()


@pytest.fixture
def clean_orders(conn, tmp_path: Path) -> list[str]:
    return [
        write_orders(conn, tmp_path / "orders-day1.parquet", DAY_1_ORDERS),
        write_orders(conn, tmp_path / "orders-day2.parquet", DAY_2_ORDERS),
    ]


@pytest.fixture
def predictions(tmp_path: Path) -> str:
    rows = [(1, product, 102, "test", p) for product, p in USER_1_CANDIDATES.items()]
    rows += [(1, product, None, "serving", 0.99) for product in USER_1_CANDIDATES]
    rows += [(6, 61, 602, "test", 0.7), (4, 41, None, "serving", 0.8)]
    return write_predictions(tmp_path / "predictions.parquet", rows)


def test_every_latest_test_order_gets_a_row_and_orders_without_candidates_get_none(
    conn, clean_orders, predictions
):
    result = next_baskets(conn, predictions, clean_orders)
    assert result.table.schema == BASKETS_SCHEMA
    rows = {row["order_id"]: row for row in result.table.to_pylist()}
    assert list(rows) == [102, 202, 301]
    assert [rows[order]["user_id"] for order in rows] == [1, 2, 3]
    for order in (202, 301):
        assert rows[order] | {"order_id": 0, "user_id": 0} == {
            "order_id": 0,
            "user_id": 0,
            "products": "None",
            "n_products": 0,
            "include_none": True,
            "expected_f1": 1.0,
        }
    best = expected_f1_basket(list(USER_1_CANDIDATES.values()), list(USER_1_CANDIDATES))
    assert rows[102]["products"] == best.as_kaggle()
    assert rows[102]["n_products"] == len(best.product_ids) > 0
    assert rows[102]["include_none"] == best.include_none
    assert rows[102]["expected_f1"] == pytest.approx(best.expected_f1, rel=1e-6)
    assert (result.without_candidates, result.scored_not_test) == (2, 1)


def test_with_no_candidates_at_all_every_test_order_is_none(conn, clean_orders, tmp_path):
    result = next_baskets(conn, write_predictions(tmp_path / "empty.parquet", []), clean_orders)
    assert result.table.column("order_id").to_pylist() == [102, 202, 301]
    assert set(result.table.column("products").to_pylist()) == {"None"}
    assert (result.without_candidates, result.scored_not_test) == (3, 0)


def test_an_earlier_partition_alone_has_its_own_test_orders(conn, clean_orders, predictions):
    result = next_baskets(conn, predictions, clean_orders[:1])
    assert result.table.column("order_id").to_pylist() == [301, 401]
    assert result.without_candidates == 2


def test_submission_file_has_a_kaggle_row_for_every_test_order(conn, clean_orders, predictions, tmp_path):
    baskets = tmp_path / "next_basket.parquet"
    pq.write_table(next_baskets(conn, predictions, clean_orders).table, baskets)
    out = tmp_path / "out" / "submission.csv"
    assert write_submission(conn, str(baskets), out) == 3
    with out.open(newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["order_id", "products"]
    assert [line[0] for line in lines[1:]] == ["102", "202", "301"]
    assert lines[2:] == [["202", "None"], ["301", "None"]]
    assert all(token == "None" or token.isdigit() for token in lines[1][1].split(" "))


def test_a_calibrated_none_probability_changes_the_basket_as_the_optimiser_says(
    conn, clean_orders, predictions
):
    # A calibration that only looks at the candidate count, fixed at P(None) = 0.9 for this order.
    from instarec_assets.ml.none_probability import NONE_FEATURES, NoneCalibration

    sure_none = NoneCalibration(
        features=NONE_FEATURES,
        means=(0.0,) * 4,
        scales=(1.0,) * 4,
        coefficients=(0.0,) * 4,
        intercept=float(np.log(0.9 / 0.1)),
    )
    rows = {
        row["order_id"]: row
        for row in next_baskets(conn, predictions, clean_orders, sure_none).table.to_pylist()
    }
    best = expected_f1_basket(list(USER_1_CANDIDATES.values()), list(USER_1_CANDIDATES), p_none=0.9)
    assert rows[102]["products"] == best.as_kaggle()
    assert rows[102]["expected_f1"] == pytest.approx(best.expected_f1, rel=1e-6)
    assert rows[102]["include_none"]
    default = {
        row["order_id"]: row for row in next_baskets(conn, predictions, clean_orders).table.to_pylist()
    }
    assert default[102]["products"] != rows[102]["products"]


def test_carried_baskets_equal_a_selection_of_every_test_order(conn, clean_orders, tmp_path):
    """Batch 2 carries batch 1's baskets and selects again only for users with an order in batch 2 or
    re-scored rows: the result is row for row what selecting every test order over the chain gives."""
    day_1 = write_orders(
        conn,
        tmp_path / "orders-day1-more.parquet",
        [*DAY_1_ORDERS, (701, 7, "test", 1, 1, 9, None), (801, 8, "test", 1, 1, 9, None)],
    )
    base = write_predictions(
        tmp_path / "predictions-1.parquet",
        [
            (4, 41, 401, "test", 0.8),
            (7, 71, 701, "test", 0.6),
            (7, 72, 701, "test", 0.3),
            (8, 81, 801, "test", 0.4),
        ],
    )
    previous = tmp_path / "baskets-1.parquet"
    pq.write_table(next_baskets(conn, [base], [day_1]).table, previous)
    # user 8 has no order in batch 2 but is re-scored (a moved product, say); user 1 orders and is
    # scored; user 4's test order becomes history; users 3 and 7 are untouched
    delta = write_predictions(
        tmp_path / "predictions-2.parquet",
        [(1, product, 102, "test", p) for product, p in USER_1_CANDIDATES.items()]
        + [(8, 81, 801, "test", 0.05), (8, 82, 801, "test", 0.95)],
    )
    chain, orders = [base, delta], [day_1, clean_orders[1]]

    assert recomputed_users(conn, orders[-1], delta) == 6  # users 1, 2, 4, 5, 6, 8
    carried = carried_baskets(conn, str(previous), chain, orders)
    selected = next_baskets(conn, chain, orders)

    assert carried.table.equals(selected.table)
    assert carried.carried_orders == 2 and carried.recomputed_users == 6
    assert carried.without_candidates == selected.without_candidates == 2  # users 2 and 3
    rows = {row["user_id"]: row for row in carried.table.to_pylist()}
    assert 4 not in rows and rows[8]["products"] == "82"  # not batch 1's "81"
