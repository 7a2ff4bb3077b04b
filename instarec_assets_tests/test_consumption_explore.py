"""Personal explore items from the user's co-purchase neighbourhood, on a hand-made lake."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.consumption.recommendations import personal_explore_items


def _write(path: Path, columns: dict[str, list]) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.fixture
def lake(tmp_path: Path) -> dict[str, str]:
    return {
        # user 1 bought 10 and 20; user 2 bought 30; user 3 bought 99; a target-framing row is ignored
        "user_product_features": _write(
            tmp_path / "upf.parquet",
            {
                "framing": ["serving", "serving", "serving", "serving", "target"],
                "user_id": [1, 1, 2, 3, 1],
                "product_id": [10, 20, 30, 99, 40],
            },
        ),
        # 50 is discontinued
        "products": _write(
            tmp_path / "products.parquet",
            {"product_id": [10, 20, 30, 40, 50, 60, 70, 99], "is_current": [True] * 4 + [False] + [True] * 3},
        ),
        "similar_items": _write(
            tmp_path / "similar.parquet",
            {
                "product_id": [10, 10, 20, 20, 20, 30],
                "similar_product_id": [30, 40, 40, 10, 50, 10],
                "score": [0.5, 0.2, 0.4, 0.9, 0.6, 0.3],
            },
        ),
        "fallback": _write(
            tmp_path / "fallback.parquet",
            {
                "user_id": [2, 2, 3, 3],
                "explore_rank": [1, 2, 1, 2],
                "product_id": [60, 10, 50, 70],
                "similarity": [0.9, 0.8, 0.7, 0.5],
            },
        ),
    }


def _explore(lake: dict[str, str], tmp_path: Path, k: int = 2, **options) -> list[tuple]:
    staged = personal_explore_items(
        duckdb.connect(),
        lake["similar_items"],
        lake["user_product_features"],
        lake["products"],
        lake["fallback"],
        tmp_path / "explore.parquet",
        k=k,
        **options,
    )
    table = pq.read_table(staged.path).to_pylist()
    assert staged.row_count == len(table)
    return [
        (
            row["user_id"],
            row["explore_rank"],
            row["product_id"],
            round(row["similarity"], 4),
            row["explore_source"],
        )
        for row in table
    ]


def test_neighbours_of_what_the_user_bought_scored_by_summed_similarity(lake, tmp_path) -> None:
    rows = _explore(lake, tmp_path)
    # user 1: 40 = 0.2 (from 10) + 0.4 (from 20); 30 = 0.5; 10 is bought, 50 discontinued.
    assert rows[:2] == [(1, 1, 40, 0.6, "co-purchase"), (1, 2, 30, 0.5, "co-purchase")]
    # user 2: co-purchase 10 first, then filled from the embedding neighbours (60).
    assert rows[2:4] == [(2, 1, 10, 0.3, "co-purchase"), (2, 2, 60, 0.9, "graphsage")]
    # user 3: no co-purchase neighbour; the embedding fallback without the discontinued 50.
    assert rows[4:] == [(3, 1, 70, 0.5, "graphsage")]


def test_k_limits_each_list_and_must_be_positive(lake, tmp_path) -> None:
    assert [row[:3] for row in _explore(lake, tmp_path, k=1)] == [(1, 1, 40), (2, 1, 10), (3, 1, 70)]
    with pytest.raises(ValueError, match="k must be at least 1"):
        _explore(lake, tmp_path, k=0)


def test_users_in_batches_give_the_same_lists_and_leave_no_part_files(lake, tmp_path) -> None:
    whole = _explore(lake, tmp_path)
    assert _explore(lake, tmp_path, batch_users=1) == whole
    assert _explore(lake, tmp_path, batch_users=2) == whole
    assert sorted(path.name for path in tmp_path.glob("explore*")) == ["explore.parquet"]
    with pytest.raises(ValueError, match="batch_users must be at least 1"):
        _explore(lake, tmp_path, batch_users=0)


def test_only_the_given_users_and_none_at_all(lake, tmp_path) -> None:
    whole = _explore(lake, tmp_path)
    assert _explore(lake, tmp_path, user_ids=[3, 1], batch_users=1) == [row for row in whole if row[0] != 2]
    assert _explore(lake, tmp_path, user_ids=[]) == []
    assert pq.read_schema(tmp_path / "explore.parquet").names == [
        "user_id",
        "explore_rank",
        "product_id",
        "similarity",
        "explore_source",
    ]
