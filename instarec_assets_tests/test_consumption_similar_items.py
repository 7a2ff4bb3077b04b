"""Similar items from co-purchases: real parquet order lines over two batches, read by DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.consumption.similar_items import similar_items

# product_id: (name, aisle_id, department_id, is_current)
PRODUCTS = {
    1: ("Bananas", 10, 100, True),
    2: ("Strawberries", 10, 100, True),
    3: ("Milk", 20, 200, True),
    4: ("Old Cereal", 30, 200, False),  # discontinued: never listed
    5: ("Rare Jam", 30, 200, True),
}
# Batch 1 and batch 2 order lines: order_id -> products in the basket.
BATCH_1 = {1: [1, 2, 3], 2: [1, 2], 3: [1, 2, 4], 4: [1, 3, 4]}
BATCH_2 = {5: [1, 2, 4], 6: [3, 1, 4], 7: [5, 1], 8: [2, 3]}


def write_lines(path: Path, baskets: dict[int, list[int]]) -> str:
    rows = [
        (order, product, position + 1)
        for order, items in baskets.items()
        for position, product in enumerate(items)
    ]
    order_ids, product_ids, positions = zip(*rows, strict=True)
    pq.write_table(
        pa.table(
            {
                "order_id": pa.array(order_ids, pa.int32()),
                "product_id": pa.array(product_ids, pa.int32()),
                "add_to_cart_order": pa.array(positions, pa.int16()),
                "reordered": pa.array([0] * len(rows), pa.int8()),
                "eval_set": pa.array(["prior"] * len(rows)),
                "_source_file": pa.array(["landing/order_products.csv"] * len(rows)),
                "_ingested_at": pa.array([None] * len(rows), pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    return str(path)


@pytest.fixture
def lake(tmp_path: Path) -> dict[str, object]:
    ids = list(PRODUCTS)
    pq.write_table(
        pa.table(
            {
                "product_id": pa.array(ids, pa.int32()),
                "product_name": [PRODUCTS[i][0] for i in ids],
                "aisle_id": pa.array([PRODUCTS[i][1] for i in ids], pa.int32()),
                "department_id": pa.array([PRODUCTS[i][2] for i in ids], pa.int32()),
                "is_current": [PRODUCTS[i][3] for i in ids],
            }
        ),
        tmp_path / "products.parquet",
    )
    pq.write_table(
        pa.table({"aisle_id": pa.array([10, 20, 30], pa.int32()), "aisle": ["fruit", "dairy", "breakfast"]}),
        tmp_path / "aisles.parquet",
    )
    pq.write_table(
        pa.table({"department_id": pa.array([100, 200], pa.int32()), "department": ["produce", "other"]}),
        tmp_path / "departments.parquet",
    )
    return {
        "lines": [
            write_lines(tmp_path / "b1.parquet", BATCH_1),
            write_lines(tmp_path / "b2.parquet", BATCH_2),
        ],
        "products": str(tmp_path / "products.parquet"),
        "aisles": str(tmp_path / "aisles.parquet"),
        "departments": str(tmp_path / "departments.parquet"),
        "out": tmp_path / "similar.parquet",
    }


def run(lake: dict[str, object], **kwargs) -> list[dict]:
    with duckdb.connect() as conn:
        staged = similar_items(
            conn, lake["lines"], lake["products"], lake["aisles"], lake["departments"], lake["out"], **kwargs
        )
    rows = pq.read_table(staged.path).to_pylist()
    assert staged.row_count == len(rows)
    return rows


def test_scores_are_normalised_co_occurrence_over_every_batch(lake: dict[str, object]) -> None:
    rows = run(lake, min_support=2)
    by_pair = {(row["product_id"], row["similar_product_id"]): row for row in rows}
    # bananas in 7 baskets, strawberries in 5, together in 4 (orders 1, 2, 3, 5); 8 baskets in all
    bananas_strawberries = by_pair[(1, 2)]
    assert bananas_strawberries["together"] == 4
    assert bananas_strawberries["score"] == pytest.approx(4 / (7 * 5) ** 0.5)
    assert bananas_strawberries["lift"] == pytest.approx(4 * 8 / (7 * 5))
    assert (
        bananas_strawberries["product_name"],
        bananas_strawberries["aisle"],
        bananas_strawberries["department"],
    ) == (
        "Strawberries",
        "fruit",
        "produce",
    )
    # milk (4 baskets) with bananas 3 times, with strawberries twice
    assert by_pair[(3, 1)]["together"] == 3
    assert [row["similar_product_id"] for row in rows if row["product_id"] == 3] == [1, 2]
    assert [row["rank"] for row in rows if row["product_id"] == 3] == [1, 2]


def test_never_the_product_itself_nor_a_discontinued_one_nor_below_support(lake: dict[str, object]) -> None:
    rows = run(lake, min_support=2)
    assert all(row["product_id"] != row["similar_product_id"] for row in rows)
    assert 4 not in {row["product_id"] for row in rows} | {row["similar_product_id"] for row in rows}
    # rare jam shares only one basket with bananas: below the support of 2
    assert 5 not in {row["product_id"] for row in rows} | {row["similar_product_id"] for row in rows}
    assert (1, 5) in {(row["product_id"], row["similar_product_id"]) for row in run(lake, min_support=1)}


def test_top_k_and_ties_are_deterministic(lake: dict[str, object]) -> None:
    first = run(lake, min_support=1, top_k=1)
    assert [(row["product_id"], row["similar_product_id"]) for row in first] == [
        (1, 2),
        (2, 1),
        (3, 1),
        (5, 1),
    ]
    assert run(lake, min_support=1, top_k=1) == first


def test_bad_parameters_name_themselves(lake: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="min_support must be at least 1, got 0"):
        run(lake, min_support=0)
    with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
        run(lake, top_k=0)
