"""Feature sets on hand-built clean tables whose values are computed by hand below.

Products: 1 A, 2 B, 3 C, 4 D, 5 E, 6 F. Aisles: A, B, E in 10; C in 11 (moved from 13); D in 12; F in 13.
Departments: aisles 10 and 11 in department 1, aisles 12 and 13 in department 2.

user 1 (batch 1): orders 10..13 history, 14 the train target (A and D; D is bought only there).
user 2: batch 1 lands 20, 21 and 22 as `test`; batch 2 lands 23, 24 (train) and 22's lines as prior.
user 3 (batch 1): 30, 31 history, 32 a test target.
user 4: 41 landed as `test` in batch 1 and its lines never arrive; 42 and 43 (train) in batch 2.
user 5 (batch 2): a single train order, so no history for training, one order of history for serving.

The earlier framing (extra training targets) takes each user's order before the target order as its
target: 13 for user 1, 23 for user 2, 31 for user 3 (its last order is a test order), 42 for user 4.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from instarec_assets.features import (
    FEATURE_COLUMNS,
    FEATURES,
    NULLABLE_FEATURES,
    CleanSnapshot,
    FeatureTables,
    build_features,
    feature_summary,
)

NO_GAP = None
ORDERS = {
    1: [
        (10, 1, "prior", 1, 0, 8, NO_GAP),
        (11, 1, "prior", 2, 1, 9, 5),
        (12, 1, "prior", 3, 2, 10, 7),
        (13, 1, "prior", 4, 3, 11, 3),
        (14, 1, "train", 5, 4, 12, 6),
        (20, 2, "prior", 1, 5, 14, NO_GAP),
        (21, 2, "prior", 2, 6, 15, 10),
        (22, 2, "test", 3, 0, 16, 4),
        (30, 3, "prior", 1, 3, 9, NO_GAP),
        (31, 3, "prior", 2, 3, 10, 14),
        (32, 3, "test", 3, 4, 11, 9),
        (40, 4, "prior", 1, 1, 8, NO_GAP),
        (41, 4, "test", 2, 1, 9, 3),
    ],
    2: [
        (23, 2, "prior", 4, 1, 17, 2),
        (24, 2, "train", 5, 2, 18, 8),
        (42, 4, "prior", 3, 1, 10, 5),
        (43, 4, "train", 4, 1, 11, 6),
        (50, 5, "train", 1, 2, 13, NO_GAP),
    ],
}
# (order_id, product_id, add_to_cart_order, reordered, eval_set)
LINES = {
    1: [
        (10, 1, 1, 0, "prior"),
        (10, 2, 2, 0, "prior"),
        (11, 1, 1, 1, "prior"),
        (11, 3, 2, 0, "prior"),
        (11, 5, 3, 0, "prior"),
        (12, 2, 1, 1, "prior"),
        (13, 1, 1, 1, "prior"),
        (13, 2, 2, 1, "prior"),
        (13, 3, 3, 1, "prior"),
        (14, 1, 1, 1, "train"),
        (14, 4, 2, 0, "train"),
        (20, 1, 1, 0, "prior"),
        (21, 1, 1, 1, "prior"),
        (21, 6, 2, 0, "prior"),
        (30, 5, 1, 0, "prior"),
        (31, 5, 1, 1, "prior"),
        (31, 2, 2, 0, "prior"),
        (40, 6, 1, 0, "prior"),
    ],
    2: [
        (22, 3, 1, 0, "prior"),
        (23, 1, 1, 1, "prior"),
        (24, 3, 1, 1, "train"),
        (24, 6, 2, 1, "train"),
        (42, 6, 1, 1, "prior"),
        (42, 2, 2, 0, "prior"),
        (43, 2, 1, 1, "train"),
        (50, 1, 1, 0, "train"),
    ],
}
# (product_id, aisle_id, department_id, is_current): C moved from aisle 13 to 11, only 11 counts.
PRODUCTS = [
    (1, 10, 1, True),
    (2, 10, 1, True),
    (3, 13, 2, False),
    (3, 11, 1, True),
    (4, 12, 2, True),
    (5, 10, 1, True),
    (6, 13, 2, True),
]
AISLE_DEPARTMENT = {10: 1, 11: 1, 12: 2, 13: 2}
DAYS = {1: "2025-01-06", 2: "2025-01-13"}

ORDERS_SQL = """
SELECT order_id::INTEGER AS order_id, user_id::INTEGER AS user_id, eval_set::VARCHAR AS eval_set,
       order_number::SMALLINT AS order_number, order_dow::TINYINT AS order_dow,
       order_hour_of_day::TINYINT AS order_hour_of_day,
       days_since_prior_order::TINYINT AS days_since_prior_order,
       'orders.csv' AS _source_file, now() AS _ingested_at
FROM frame
"""
LINES_SQL = """
SELECT order_id::INTEGER AS order_id, product_id::INTEGER AS product_id,
       add_to_cart_order::SMALLINT AS add_to_cart_order, reordered::TINYINT AS reordered,
       eval_set::VARCHAR AS eval_set, 'order_products.csv' AS _source_file, now() AS _ingested_at
FROM frame
"""
PRODUCTS_SQL = """
SELECT product_id::INTEGER AS product_id, 'product ' || product_id AS product_name,
       aisle_id::INTEGER AS aisle_id, department_id::INTEGER AS department_id,
       DATE '2025-01-06' AS valid_from, NULL::DATE AS valid_to, is_current,
       'products.csv' AS _source_file, now() AS _ingested_at
FROM frame
"""
AISLES_SQL = (
    "SELECT aisle_id::INTEGER AS aisle_id, 'aisle ' || aisle_id AS aisle, DATE '2025-01-06' AS updated_on"
    " FROM frame"
)
DEPARTMENTS_SQL = (
    "SELECT department_id::INTEGER AS department_id, 'department ' || department_id AS department,"
    " DATE '2025-01-06' AS updated_on FROM frame"
)


def _write(root: Path, table: str, day: str, sql: str, frame: pd.DataFrame) -> str:
    """One clean partition file in the lake's hive-style layout (read with hive_partitioning off)."""
    year, month, dom = day.split("-")
    path = root / table / f"year={year}" / f"month={month}" / f"day={dom}" / f"{table}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect()
    conn.register("frame", frame)
    conn.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet)")
    conn.close()
    return str(path)


def write_snapshot(
    root: Path, batches: int = 2, lines: dict[int, list[tuple]] | None = None
) -> CleanSnapshot:
    """Clean-zone files for batches 1..`batches`; `lines` replaces LINES when given."""
    lines = LINES if lines is None else lines
    order_columns = ["order_id", "user_id", "eval_set", "order_number", "order_dow", "order_hour_of_day"]
    order_columns.append("days_since_prior_order")
    line_columns = ["order_id", "product_id", "add_to_cart_order", "reordered", "eval_set"]
    order_uris, line_uris = [], []
    for batch in range(1, batches + 1):
        orders = pd.DataFrame(ORDERS[batch], columns=order_columns).astype(
            {"days_since_prior_order": "Int64"}
        )
        order_uris.append(_write(root, "clean_orders", DAYS[batch], ORDERS_SQL, orders))
        batch_lines = pd.DataFrame(lines[batch], columns=line_columns)
        line_uris.append(_write(root, "clean_order_products", DAYS[batch], LINES_SQL, batch_lines))
    last = DAYS[batches]
    products = pd.DataFrame(PRODUCTS, columns=["product_id", "aisle_id", "department_id", "is_current"])
    aisles = pd.DataFrame({"aisle_id": list(AISLE_DEPARTMENT)})
    departments = pd.DataFrame({"department_id": sorted(set(AISLE_DEPARTMENT.values()))})
    return CleanSnapshot(
        orders=order_uris,
        order_products=line_uris,
        products=_write(root, "clean_products", last, PRODUCTS_SQL, products),
        aisles=_write(root, "clean_aisles", last, AISLES_SQL, aisles),
        departments=_write(root, "clean_departments", last, DEPARTMENTS_SQL, departments),
    )


def build(root: Path, batches: int = 2, lines: dict[int, list[tuple]] | None = None) -> FeatureTables:
    snapshot = write_snapshot(root / "lake", batches, lines)
    with duckdb.connect() as conn:
        return build_features(conn, snapshot, root / "scratch")


def read(path: Path) -> pd.DataFrame:
    with duckdb.connect() as conn:
        return conn.execute("SELECT * FROM read_parquet(?, hive_partitioning = false)", [str(path)]).df()


def row(frame: pd.DataFrame, user_id: int, product_id: int, **where: str) -> pd.Series:
    mask = (frame.user_id == user_id) & (frame.product_id == product_id)
    for column, value in where.items():
        mask &= frame[column] == value
    assert mask.sum() == 1, f"expected one row for user {user_id} product {product_id} {where}"
    return frame[mask].iloc[0]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> FeatureTables:
    return build(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def training_set(tables: FeatureTables) -> pd.DataFrame:
    return read(tables.training_set.path)


@pytest.fixture(scope="module")
def training(training_set: pd.DataFrame) -> pd.DataFrame:
    """The target framing's rows: the user's last order is the target."""
    return training_set[training_set.eval_set == "train"].reset_index(drop=True)


@pytest.fixture(scope="module")
def earlier(training_set: pd.DataFrame) -> pd.DataFrame:
    """The earlier framing's rows: the order before the last is the target."""
    return training_set[training_set.eval_set == "train_earlier"].reset_index(drop=True)


@pytest.fixture(scope="module")
def inference(tables: FeatureTables) -> pd.DataFrame:
    return read(tables.inference_set.path)


def test_hand_computed_features_of_user_1(training: pd.DataFrame) -> None:
    """History 10..13 with gaps 5, 7, 3 (cum days 0, 5, 12, 15); target 14 on dow 4, hour 12, gap 6."""
    a = row(training, 1, 1)
    assert (a.order_id, a.eval_set, a.label) == (14, "train", 1)
    assert (a.t_dow, a.t_hour, a.t_days_since_prior) == (4, 12, 6)
    assert (a.u_orders, a.u_items, a.u_distinct_products) == (4, 9, 4)
    assert a.u_basket_mean == pytest.approx(9 / 4)
    assert a.u_reorder_ratio == pytest.approx(5 / 7)  # reordered lines / lines after the first order
    assert a.u_days_between_mean == pytest.approx(5)
    assert a.u_days_between_std == pytest.approx(math.sqrt(((5 - 5) ** 2 + (7 - 5) ** 2 + (3 - 5) ** 2) / 3))
    assert (a.u_days_span, a.u_usual_dow, a.u_usual_hour) == (15, 0, 9)
    assert a.u_distinct_share == pytest.approx(4 / 9)
    # A: bought in 10, 11, 13.
    assert (a.up_orders, a.up_first_order, a.up_last_order, a.up_orders_since_last) == (3, 1, 4, 0)
    assert (a.up_streak, a.up_in_last_1, a.up_in_last_3, a.up_in_last_5) == (1, 1, 2, 3)
    assert a.up_days_since_last == 6
    assert a.up_rate == pytest.approx(3 / 4)
    assert a.up_rate_since_first == pytest.approx(3 / 4)
    assert a.up_days_between_mean == pytest.approx(15 / 2)
    assert a.up_cart_mean == pytest.approx(1)
    assert a.up_reorder_share == pytest.approx(2 / 3)
    assert a.up_hour_diff == pytest.approx(12 - (8 + 9 + 11) / 3, rel=1e-6)
    assert a.ua_item_share == pytest.approx(7 / 9)  # A 3 + B 3 + E 1 in aisle 10
    assert a.ud_item_share == pytest.approx(1)
    assert (a.p_aisle_id, a.p_department_id) == (10, 1)
    # B: bought in 10, 12, 13, so a streak of two.
    b = row(training, 1, 2)
    assert (b.label, b.up_orders, b.up_streak, b.up_in_last_1, b.up_in_last_3) == (0, 3, 2, 1, 2)
    assert b.up_cart_mean == pytest.approx(5 / 3)
    # C: bought in 11 and 13.
    c = row(training, 1, 3)
    assert (c.up_first_order, c.up_streak, c.up_in_last_3) == (2, 1, 2)
    assert c.ua_item_share == pytest.approx(2 / 9)
    assert c.up_rate_since_first == pytest.approx(2 / 3)
    # E: bought once in 11: two orders ago, 15 - 5 + 6 days before the target.
    e = row(training, 1, 5)
    assert (e.up_orders_since_last, e.up_days_since_last, e.up_streak) == (2, 16, 0)
    assert (e.up_in_last_1, e.up_in_last_3, e.up_in_last_5) == (0, 1, 1)
    assert pd.isna(e.up_days_between_mean)


def test_earlier_targets_are_the_order_before_the_last(earlier: pd.DataFrame) -> None:
    labels = {
        (u, p, o): int(label)
        for u, p, o, label in zip(
            earlier.user_id, earlier.product_id, earlier.order_id, earlier.label, strict=True
        )
    }
    assert labels == {
        (1, 1, 13): 1, (1, 2, 13): 1, (1, 3, 13): 1, (1, 5, 13): 0,
        (2, 1, 23): 1, (2, 6, 23): 0, (2, 3, 23): 0,
        (3, 5, 31): 1,
        (4, 6, 42): 1,
    }  # fmt: skip
    # User 1 as of order 13: history 10, 11, 12 (gaps 5, 7), target on dow 3, hour 11, gap 3.
    a = row(earlier, 1, 1)
    assert (a.t_dow, a.t_hour, a.t_days_since_prior) == (3, 11, 3)
    assert (a.u_orders, a.u_items, a.u_distinct_products, a.u_days_span) == (3, 6, 4, 12)
    assert (a.up_orders, a.up_first_order, a.up_last_order, a.up_orders_since_last) == (2, 1, 2, 1)
    assert (a.up_streak, a.up_in_last_1, a.up_in_last_3) == (0, 0, 2)
    assert a.up_days_since_last == 12 - 5 + 3
    # Product statistics over every user's earlier history: A in 10, 11 (user 1) and 20, 21 (user 2).
    assert (a.p_orders, a.p_buyers) == (4, 2)
    # User 3's last order is a test order: the order before it is still a labelled target.
    assert row(earlier, 3, 5).u_orders == 1


def test_earlier_targets_only_for_short_histories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every user gets the earlier framing's level rows; training rows only up to the history limit."""
    monkeypatch.setattr("instarec_assets.features.sets.EARLIER_TARGET_MAX_HISTORY", 2)
    limited = build(tmp_path)
    rows = read(limited.training_set.path).query("eval_set == 'train_earlier'")
    assert set(rows.user_id) == {3, 4}  # users 1 and 2 have 3 history orders before their earlier target
    users = read(limited.user_features.path).query("framing == 'earlier'")
    assert set(users.user_id) == {1, 2, 3, 4}


def test_product_statistics_come_from_history_lines_only(tables: FeatureTables) -> None:
    products = read(tables.product_features.path)
    target = products[products.framing == "target"].set_index("product_id")
    # C: 11 and 13 (user 1) and 22 (user 2, arrived late); 24's train line is a target line.
    assert (target.loc[3, "p_orders"], target.loc[3, "p_buyers"]) == (3, 2)
    assert target.loc[3, "p_reorder_prob"] == pytest.approx(1 / 2)
    assert (target.loc[3, "p_aisle_id"], target.loc[3, "p_department_id"]) == (11, 1)
    # A: 10, 11, 13 (user 1) and 20, 21, 23 (user 2); 14 and 50 are targets.
    assert (target.loc[1, "p_orders"], target.loc[1, "p_buyers"]) == (6, 2)
    assert target.loc[1, "p_orders_between_mean"] == pytest.approx((3 + 3) / 4)
    assert 4 not in target.index  # D is bought only in a target order
    serving = products[products.framing == "serving"].set_index("product_id")
    assert serving.loc[4, "p_orders"] == 1
    assert serving.loc[1, "p_orders"] == 8


def test_target_detection_across_batches(tmp_path: Path) -> None:
    """Order 22 is user 2's test target after batch 1; after batch 2 it is history with late lines."""
    first = build(tmp_path / "first", batches=1)
    test_rows = read(first.inference_set.path).query("eval_set == 'test' and user_id == 2")
    assert set(test_rows.product_id) == {1, 6}
    assert set(test_rows.order_id) == {22}
    first_training = read(first.training_set.path).query("user_id == 2")
    assert set(first_training.eval_set) == {"train_earlier"}  # order 21, before the test order 22
    assert set(first_training.order_id) == {21}

    second = build(tmp_path / "second", batches=2)
    train_rows = (
        read(second.training_set.path).query("user_id == 2 and eval_set == 'train'").set_index("product_id")
    )
    assert set(train_rows.order_id) == {24}
    assert dict(train_rows.label) == {1: 0, 3: 1, 6: 1}  # C is a candidate thanks to 22's late lines
    assert train_rows.loc[3, "up_last_order"] == 3
    assert train_rows.loc[1, "u_orders"] == 4
    assert read(second.inference_set.path).query("eval_set == 'test' and user_id == 2").empty


def test_history_order_whose_lines_never_arrived(training: pd.DataFrame) -> None:
    """User 4's order 41 (once a test order) counts as an order with no lines."""
    f = row(training, 4, 6)
    assert (f.u_orders, f.u_items) == (3, 3)
    assert f.u_basket_mean == pytest.approx(3 / 2)
    assert (f.up_orders, f.up_streak, f.up_in_last_3, f.up_days_since_last) == (2, 1, 2, 6)
    assert row(training, 4, 2).label == 1


def test_candidates_are_history_products_only(
    training: pd.DataFrame, earlier: pd.DataFrame, inference: pd.DataFrame
) -> None:
    history = {(1, 1), (1, 2), (1, 3), (1, 5), (2, 1), (2, 6), (2, 3), (4, 6), (4, 2)}
    assert set(zip(training.user_id, training.product_id, strict=True)) == history
    assert set(training.eval_set) == {"train"}
    assert set(zip(earlier.user_id, earlier.product_id, strict=True)) <= history | {(3, 5)}
    test_rows = inference[inference.eval_set == "test"]
    assert set(zip(test_rows.user_id, test_rows.product_id, strict=True)) == {(3, 5), (3, 2)}
    assert 4 not in set(training.product_id) | set(test_rows.product_id)
    assert 5 not in set(training.user_id)  # a single order: nothing to learn from


def test_train_labels(training: pd.DataFrame) -> None:
    labels = {
        (u, p): int(label)
        for u, p, label in zip(training.user_id, training.product_id, training.label, strict=True)
    }
    assert labels == {
        (1, 1): 1, (1, 2): 0, (1, 3): 0, (1, 5): 0,
        (2, 1): 0, (2, 6): 1, (2, 3): 1,
        (4, 6): 0, (4, 2): 1,
    }  # fmt: skip
    assert training.label.dtype.kind == "i"


def test_no_leakage_from_target_order_contents(
    tmp_path: Path, tables: FeatureTables, training: pd.DataFrame
) -> None:
    """Other contents for the train target orders change the labels and nothing else."""
    changed = {batch: list(lines) for batch, lines in LINES.items()}
    changed[1] = [line for line in changed[1] if line[:2] != (14, 4)] + [
        (14, 2, 2, 1, "train"),
        (14, 6, 3, 0, "train"),
    ]
    changed[2] = [line for line in changed[2] if line[:2] != (24, 3)] + [(24, 5, 2, 0, "train")]
    changed[2] = [*changed[2], (43, 6, 2, 1, "train"), (43, 1, 3, 0, "train")]
    other = build(tmp_path, lines=changed)
    other_training = read(other.training_set.path).query("eval_set == 'train'")
    keys = ["user_id", "product_id"]
    before = training.sort_values(keys).reset_index(drop=True)
    after = other_training.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(before.drop(columns="label"), after.drop(columns="label"), check_exact=True)
    assert not before.label.equals(after.label)
    assert row(after, 1, 2).label == 1 and row(after, 2, 3).label == 0
    products_before = read(tables.product_features.path).query("framing == 'target'").reset_index(drop=True)
    products_after = read(other.product_features.path).query("framing == 'target'").reset_index(drop=True)
    pd.testing.assert_frame_equal(products_before, products_after, check_exact=True)
    users_before = read(tables.user_features.path).query("framing == 'target'").reset_index(drop=True)
    users_after = read(other.user_features.path).query("framing == 'target'").reset_index(drop=True)
    pd.testing.assert_frame_equal(users_before, users_after, check_exact=True)


def test_serving_rows_for_every_user_with_history(inference: pd.DataFrame) -> None:
    serving = inference[inference.eval_set == "serving"]
    assert set(serving.user_id) == {1, 2, 3, 4, 5}
    assert serving.order_id.isna().all() and serving.label.isna().all()
    # The train target's lines are history for serving: D becomes a candidate of user 1.
    d = row(serving, 1, 4)
    assert (d.u_orders, d.up_orders, d.up_orders_since_last, d.up_in_last_1) == (5, 1, 0, 1)
    # The future order's row: usual dow (all five dows once: lowest), median hour, rounded mean gap.
    assert (d.t_dow, d.t_hour, d.t_days_since_prior) == (0, 10, round((5 + 7 + 3 + 6) / 4))
    assert d.up_days_since_last == 5
    # User 3's test order has no lines: serving history stops before it, like the test rows.
    e = row(serving, 3, 5)
    assert (e.u_orders, e.t_dow, e.t_hour, e.t_days_since_prior) == (2, 3, 9, 14)
    # User 5 has one order: no gap of its own, so the mean gap over all orders stands in.
    single = row(serving, 5, 1)
    assert single.u_orders == 1 and pd.isna(single.u_days_between_mean)
    assert single.t_days_since_prior == round((5 + 7 + 3 + 6 + 10 + 4 + 2 + 8 + 14 + 9 + 3 + 5 + 6) / 13)


def test_test_rows_use_the_test_order_row(inference: pd.DataFrame) -> None:
    test_rows = inference[inference.eval_set == "test"]
    assert set(test_rows.order_id) == {32}
    assert set(zip(test_rows.t_dow, test_rows.t_hour, test_rows.t_days_since_prior, strict=True)) == {
        (4, 11, 9)
    }
    e = row(test_rows, 3, 5)
    assert (e.up_orders, e.up_streak, e.up_days_since_last) == (2, 2, 9)
    assert test_rows.label.isna().all()


def test_feature_columns_and_documented_nulls(
    tables: FeatureTables, training: pd.DataFrame, inference: pd.DataFrame
) -> None:
    assert len(FEATURE_COLUMNS) >= 30
    assert tables.feature_columns == FEATURE_COLUMNS == tuple(FEATURES)
    assert set(NULLABLE_FEATURES) <= set(FEATURE_COLUMNS)
    head = ["user_id", "product_id", "order_id", "eval_set", "label"]
    assert list(training.columns) == head + list(FEATURE_COLUMNS)
    assert list(inference.columns) == head + list(FEATURE_COLUMNS)
    for frame in (training, inference):
        not_nullable = [column for column in FEATURE_COLUMNS if column not in NULLABLE_FEATURES]
        assert not frame[not_nullable].isna().any().any(), frame[not_nullable].isna().sum()


def test_row_counts_match_files(
    tables: FeatureTables, training: pd.DataFrame, inference: pd.DataFrame
) -> None:
    assert tables.training_set.row_count == len(training) + 9 == 18
    assert tables.inference_set.row_count == len(inference)
    users = read(tables.user_features.path)
    assert set(users.query("framing == 'target'").user_id) == {1, 2, 3, 4}
    assert set(users.query("framing == 'target'").target_set) == {"train", "test"}


def test_feature_summary_markdown(tables: FeatureTables) -> None:
    with duckdb.connect() as conn:
        stats, correlation = tables.summary(conn)
        inference_stats, inference_correlation = feature_summary(
            conn, tables.inference_set.path, FEATURE_COLUMNS, sample_rows=1000
        )
    for column in FEATURE_COLUMNS:
        assert column in stats and column in inference_stats
    assert "null_share" in stats and "pearson_with_label" in correlation
    assert "pearson_with_label" not in inference_correlation and "feature_a" in inference_correlation


def test_feature_summary_sample_is_the_same_whatever_the_row_order(
    tables: FeatureTables, tmp_path: Path
) -> None:
    """The sample is chosen by a hash of each row's key: a reordered copy gives the same tables, and
    about the asked number of rows are summarised."""
    shuffled = tmp_path / "shuffled.parquet"
    with duckdb.connect() as conn:
        conn.execute(
            f"COPY (SELECT * FROM read_parquet('{tables.inference_set.path}') ORDER BY hash(product_id), user_id DESC) "
            f"TO '{shuffled}' (FORMAT parquet)"
        )
        total = conn.execute(f"SELECT count(*) FROM read_parquet('{shuffled}')").fetchall()[0][0]
        rows = total // 3
        original = feature_summary(conn, tables.inference_set.path, FEATURE_COLUMNS, sample_rows=rows)
        reordered = feature_summary(conn, shuffled, FEATURE_COLUMNS, sample_rows=rows)
        whole = feature_summary(conn, shuffled, FEATURE_COLUMNS, sample_rows=total)
    assert original == reordered and original != whole
    counted = [float(line.split("|")[2]) for line in original[0].splitlines()[2:]]
    assert 0.5 * rows < max(counted) < 1.5 * rows, (max(counted), rows)


def test_empty_snapshot(tmp_path: Path) -> None:
    """No orders yet: every table is written, empty."""
    lake = write_snapshot(tmp_path / "lake", batches=1)
    empty = CleanSnapshot(
        orders=[], order_products=[], products=lake.products, aisles=lake.aisles, departments=lake.departments
    )
    with duckdb.connect() as conn:
        result = build_features(conn, empty, tmp_path / "scratch")
    assert result.training_set.row_count == result.inference_set.row_count == 0
    assert result.user_features.row_count == 0
