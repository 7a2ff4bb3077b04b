"""top_recommendations on a handmade lake: the rank layout (top k, explore, more candidates) and
discontinued products never listed."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from instarec_assets.consumption.recommendations import ExploreInputs, top_recommendations


def _write(path: Path, table: dict) -> str:
    pq.write_table(pa.table(table), path)
    return str(path)


def _lake(tmp_path: Path) -> dict[str, str]:
    products = list(range(1, 11))
    return {
        # user 1 scored 8 products, probability falling with the id; user 2 one product
        "predictions": _write(
            tmp_path / "predictions.parquet",
            {
                "user_id": pa.array([1] * 8 + [2], pa.int32()),
                "product_id": pa.array([1, 2, 3, 4, 5, 6, 7, 8, 1], pa.int32()),
                "order_id": pa.array([0] * 9, pa.int32()),
                "eval_set": ["serving"] * 9,
                "probability": pa.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.5], pa.float32()),
            },
        ),
        # product 2 and product 10 are discontinued (no current row)
        "products": _write(
            tmp_path / "products.parquet",
            {
                "product_id": products,
                "product_name": [f"P{p}" for p in products],
                "aisle_id": [1] * 10,
                "department_id": [1] * 10,
                "is_current": [p not in (2, 10) for p in products],
            },
        ),
        "aisles": _write(tmp_path / "aisles.parquet", {"aisle_id": [1], "aisle": ["fresh fruits"]}),
        "departments": _write(
            tmp_path / "departments.parquet", {"department_id": [1], "department": ["produce"]}
        ),
        "explore": _write(
            tmp_path / "explore.parquet",
            {"user_id": [1, 1, 2], "explore_rank": [1, 2, 1], "product_id": [10, 9, 9]},
        ),
        "user_features": _write(
            tmp_path / "user_features.parquet",
            {"user_id": [1, 2], "framing": ["serving"] * 2, "u_orders": [5, 5]},
        ),
        "product_features": _write(
            tmp_path / "product_features.parquet",
            {"product_id": [9], "framing": ["serving"], "p_buyers": [2]},
        ),
    }


def _rows(tmp_path: Path, lake: dict[str, str], **kwargs) -> list[tuple]:
    out = tmp_path / "recommendations.parquet"
    with duckdb.connect() as conn:
        top_recommendations(
            conn,
            lake["predictions"],
            lake["products"],
            lake["aisles"],
            lake["departments"],
            "model-1",
            out,
            **kwargs,
        )
    return duckdb.sql(
        f"SELECT user_id, rank, product_id, explore FROM read_parquet('{out}') ORDER BY user_id, rank"
    ).fetchall()


def test_top_k_then_explore_then_more_candidates_and_never_a_discontinued_product(tmp_path: Path):
    lake = _lake(tmp_path)
    explore = ExploreInputs(lake["explore"], lake["user_features"], lake["product_features"])
    rows = _rows(tmp_path, lake, top_k=3, candidates=5, explore=explore)
    assert rows == [
        # user 1: the top 3 current products (2 is discontinued: no gap), its explore item (the
        # first one, 10, is discontinued: 9 moves up), then candidates 4 and 5 of the 5
        (1, 1, 1, False),
        (1, 2, 3, False),
        (1, 3, 4, False),
        (1, 4, 9, True),
        (1, 5, 5, False),
        (1, 6, 6, False),
        # user 2: a short history, the explore item right after it
        (2, 1, 1, False),
        (2, 2, 9, True),
    ]


def test_without_explore_the_candidates_follow_the_top_k(tmp_path: Path):
    rows = _rows(tmp_path, _lake(tmp_path), top_k=2, candidates=4)
    assert rows == [(1, 1, 1, False), (1, 2, 3, False), (1, 3, 4, False), (1, 4, 5, False), (2, 1, 1, False)]
