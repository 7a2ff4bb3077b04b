"""Stored co-purchase counts: a batch updated from the previous counts equals a full recompute row
for row, over several batches with late lines of earlier orders and a discontinued product."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.consumption.similar_counts import (
    cooccurrence_from_counts,
    current_baskets,
    full_counts,
    incremental_counts,
    ranked_order,
    without_orders,
)
from instarec_assets.consumption.similar_items import (
    cooccurrence_pairs,
    similar_items,
    similar_items_from_counts,
)
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.duck import create_view
from instarec_assets_tests.test_consumption_similar_items import write_lines

PRODUCTS = 60
DISCONTINUED = 7
MIN_SUPPORT = 3


def random_batches(seed: int, batches: int = 4, orders: int = 120) -> list[dict[int, list[int]]]:
    """Baskets per batch with skewed popularity; each later batch also brings late lines: products
    added to a few orders of the batch before (as a `test` order's lines arrive a batch later)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, PRODUCTS + 1) ** 0.8
    weights /= weights.sum()
    out: list[dict[int, list[int]]] = []
    next_order = 1
    for batch in range(batches):
        baskets: dict[int, list[int]] = {}
        for _ in range(orders if batch == 0 else orders // 4):
            size = int(rng.integers(1, 9))
            baskets[next_order] = sorted(
                rng.choice(np.arange(1, PRODUCTS + 1), size, replace=False, p=weights).tolist()
            )
            next_order += 1
        if out:
            for order in rng.choice(sorted(out[-1]), 5, replace=False).tolist():
                bought = set(out[-1][order])
                extra = [p for p in rng.permutation(np.arange(1, 12)).tolist() if p not in bought][:3]
                baskets[int(order)] = extra  # late lines: new products of an earlier order
        out.append(baskets)
    return out


def expected_late_lines(batches: list[dict[int, list[int]]]) -> int:
    """Lines of a later batch for an order with lines in an earlier one, not already stored."""
    stored: dict[int, set[int]] = {}
    late = 0
    for baskets in batches:
        for order, products in baskets.items():
            if order in stored:
                late += len(set(products) - stored[order])
        for order, products in baskets.items():
            stored.setdefault(order, set()).update(products)
    return late


@pytest.fixture
def world(tmp_path: Path) -> dict:
    ids = list(range(1, PRODUCTS + 1))
    pq.write_table(
        pa.table(
            {
                "product_id": pa.array(ids, pa.int32()),
                "product_name": [f"product {i}" for i in ids],
                "aisle_id": pa.array([i % 3 + 1 for i in ids], pa.int32()),
                "department_id": pa.array([1] * len(ids), pa.int32()),
                "is_current": [i != DISCONTINUED for i in ids],
            }
        ),
        tmp_path / "products.parquet",
    )
    pq.write_table(
        pa.table({"aisle_id": pa.array([1, 2, 3], pa.int32()), "aisle": ["a", "b", "c"]}),
        tmp_path / "aisles.parquet",
    )
    pq.write_table(
        pa.table({"department_id": pa.array([1], pa.int32()), "department": ["d"]}),
        tmp_path / "departments.parquet",
    )
    lines = [
        write_lines(tmp_path / f"lines{i}.parquet", baskets) for i, baskets in enumerate(random_batches(5))
    ]
    return {
        "lines": lines,
        "products": str(tmp_path / "products.parquet"),
        "aisles": str(tmp_path / "aisles.parquet"),
        "departments": str(tmp_path / "departments.parquet"),
        "dir": tmp_path,
    }


def _frame(path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def _from_counts(conn, world, counts_uri: str, upto: int, out: Path, stored=None) -> pd.DataFrame:
    create_view(conn, "history", world["lines"][: upto + 1], CLEAN_ORDER_PRODUCTS_SCHEMA)
    baskets = current_baskets(conn, "history", world["products"])
    staged = similar_items_from_counts(
        conn,
        counts_uri,
        baskets,
        world["products"],
        world["aisles"],
        world["departments"],
        out,
        min_support=MIN_SUPPORT,
        stored=stored,
    )
    return _frame(staged.path)


def test_incremental_counts_give_the_full_recompute_row_for_row_over_four_batches(world) -> None:
    conn = duckdb.connect()
    folder: Path = world["dir"]
    lines = world["lines"]
    base = full_counts(conn, lines[:1], folder / "counts0.parquet", MIN_SUPPORT)
    assert base.mode == "full" and base.weak_pairs > 0
    previous = base.staged.path
    late_seen = 0
    for batch in range(1, len(lines)):
        update = incremental_counts(
            conn,
            lines[:batch],
            lines[batch : batch + 1],
            str(previous),
            str(base.staged.path),
            folder / f"counts{batch}.parquet",
            MIN_SUPPORT,
            previous_is_base=previous == base.staged.path,
        )
        late_seen += update.late_lines
        full = full_counts(conn, lines[: batch + 1], folder / f"full{batch}.parquet", MIN_SUPPORT)
        stored, recomputed = _frame(update.staged.path), _frame(full.staged.path)
        for kind in ("strong", "popularity"):
            pd.testing.assert_frame_equal(
                stored[stored.kind == kind].reset_index(drop=True),
                recomputed[recomputed.kind == kind].reset_index(drop=True),
            )
        # a weak row of an incremental batch is a pair touched since the base, with its true count
        weak = stored[stored.kind == "weak"].merge(
            recomputed, on=["product_id", "other_id"], suffixes=("", "_full")
        )
        assert len(weak) == (stored.kind == "weak").sum() and (weak.together == weak.together_full).all()
        assert update.weak_pairs < full.weak_pairs
        reference = similar_items(
            conn,
            lines[: batch + 1],
            world["products"],
            world["aisles"],
            world["departments"],
            folder / f"reference{batch}.parquet",
            min_support=MIN_SUPPORT,
        )
        incremental = _from_counts(
            conn, world, str(update.staged.path), batch, folder / f"similar{batch}.parquet"
        )
        assert len(incremental) > 100
        pd.testing.assert_frame_equal(incremental, _frame(reference.path))
        # ranked from the rows kept in memory rather than read back: the same
        assert update.stored is not None and update.moved_products > 0
        in_memory = _from_counts(
            conn, world, str(update.staged.path), batch, folder / f"mem{batch}.parquet", update.stored
        )
        pd.testing.assert_frame_equal(in_memory, incremental)
        previous = update.staged.path
    assert late_seen == expected_late_lines(random_batches(5)) > 0


def test_counts_without_some_orders_equal_the_lists_over_the_rest(world) -> None:
    conn = duckdb.connect()
    folder: Path = world["dir"]
    lines = world["lines"]
    counts = full_counts(conn, lines, folder / "counts.parquet", MIN_SUPPORT)
    held_out = list(range(1, 200, 3))
    order_sql = "SELECT unnest($orders) AS order_id"
    reduced = without_orders(
        conn,
        str(counts.staged.path),
        lines,
        order_sql,
        {"orders": held_out},
        folder / "without.parquet",
        MIN_SUPPORT,
    )
    create_view(conn, "all_lines", lines, CLEAN_ORDER_PRODUCTS_SCHEMA)
    conn.execute(
        "COPY (SELECT * FROM all_lines WHERE order_id NOT IN (SELECT unnest($orders))) TO '"
        + str(folder / "rest.parquet")
        + "' (FORMAT parquet)",
        {"orders": held_out},
    )
    reference = similar_items(
        conn,
        [str(folder / "rest.parquet")],
        world["products"],
        world["aisles"],
        world["departments"],
        folder / "reference.parquet",
        min_support=MIN_SUPPORT,
    )
    create_view(conn, "rest", [str(folder / "rest.parquet")], CLEAN_ORDER_PRODUCTS_SCHEMA)
    staged = similar_items_from_counts(
        conn,
        str(reduced.path),
        current_baskets(conn, "rest", world["products"]),
        world["products"],
        world["aisles"],
        world["departments"],
        folder / "from_counts.parquet",
        min_support=MIN_SUPPORT,
    )
    pd.testing.assert_frame_equal(_frame(staged.path), _frame(reference.path))
    assert len(_frame(staged.path)) > 50


def test_ranking_reports_target_lists_from_counts_equal_its_recount(world) -> None:
    """ranking_report's explore similarity without the target orders: from the stored counts (through
    a resolved training set) the same rows as recounting the history without them. The training
    set's extra, earlier targets (`train_earlier`) are history for the report, not targets."""
    from instarec_assets.consumption.ranking_report import ReportInputs, target_similar_items

    conn = duckdb.connect()
    folder: Path = world["dir"]
    lines = world["lines"]
    counts = full_counts(conn, lines, folder / "counts.parquet", MIN_SUPPORT)
    last_orders = list(range(2, 200, 5))
    earlier_orders = [order for order in range(3, 200, 7) if order not in last_orders]
    targets = pa.table(
        {
            "order_id": pa.array(last_orders + earlier_orders, pa.int64()),
            "eval_set": ["train"] * len(last_orders) + ["train_earlier"] * len(earlier_orders),
        }
    )
    pq.write_table(targets, folder / "training_set.parquet")
    pq.write_table(targets.slice(0, len(last_orders)), folder / "last_orders.parquet")
    unused = str(folder / "unused")
    inputs = ReportInputs(
        training_set=str(folder / "training_set.parquet"),
        xgboost_model=unused,
        user_embeddings=unused,
        product_embeddings=unused,
        user_features=unused,
        product_features=unused,
        user_product_features=unused,
        clean_products=world["products"],
        clean_aisles=world["aisles"],
        clean_departments=world["departments"],
        clean_order_products=lines,
    )
    recounted = target_similar_items(conn, inputs, folder / "recount")
    from_counts = target_similar_items(
        conn,
        ReportInputs(**{**inputs.__dict__, "similar_item_counts": str(counts.staged.path)}),
        folder / "counted",
    )
    assert len(_frame(recounted.path)) > 50
    pd.testing.assert_frame_equal(_frame(from_counts.path), _frame(recounted.path))
    last_only = target_similar_items(
        conn,
        ReportInputs(**{**inputs.__dict__, "training_set": str(folder / "last_orders.parquet")}),
        folder / "last_only",
    )
    pd.testing.assert_frame_equal(_frame(last_only.path), _frame(recounted.path))


@pytest.mark.parametrize("candidates", [1, 2, 5, 12])
def test_counts_ranking_keeps_each_products_best_pairs_as_the_baskets_query(world, candidates) -> None:
    """Fewer candidates than most products' pairs, so the score-bin pre-selection drops pairs (and
    cuts through ties: equal baskets give equal scores): the pairs kept, their order and their doubles
    are the window query's over the baskets."""
    conn = duckdb.connect()
    lines = world["lines"]
    counts = full_counts(conn, lines, world["dir"] / "counts.parquet", MIN_SUPPORT)
    create_view(conn, "history", lines, CLEAN_ORDER_PRODUCTS_SCHEMA)
    baskets = current_baskets(conn, "history", world["products"])
    expected = cooccurrence_pairs(conn, "history", world["products"], MIN_SUPPORT, candidates)
    found = cooccurrence_from_counts(
        conn, str(counts.staged.path), world["products"], baskets, MIN_SUPPORT, candidates
    )
    anchors, per_anchor = np.unique(expected["product_id"], return_counts=True)
    assert anchors.size > 40 and per_anchor.max() == candidates
    assert DISCONTINUED not in found["product_id"] and DISCONTINUED not in found["similar_product_id"]
    assert found.keys() == expected.keys()
    for name, values in expected.items():
        assert found[name].dtype == values.dtype, name
        np.testing.assert_array_equal(found[name], values, err_msg=name)


@pytest.mark.parametrize("largest_id", [60, 70_000])
def test_ranked_order_is_the_lexsort_order_with_ties(largest_id) -> None:
    """Few distinct scores and shared-basket counts, so every tie-break is exercised; ids past 16 bits
    take the non-radix group sort."""
    rng = np.random.default_rng(3)
    n = 5_000
    groups = rng.integers(1, largest_id, n)
    score = rng.choice([0.5, 0.25, 0.125 + 1e-12, 1.0], n)
    together = rng.integers(3, 6, n)
    other = rng.permutation(np.arange(n) * 7 + largest_id)
    expected = np.lexsort((other, -together, -score, groups))
    np.testing.assert_array_equal(ranked_order(groups, score, together, other), expected)
    score[0] = 0.0  # outside the IEEE-bits shortcut: the plain lexsort
    np.testing.assert_array_equal(
        ranked_order(groups, score, together, other), np.lexsort((other, -together, -score, groups))
    )
