"""Personal explore items from the user's co-purchase neighbourhood, on a hand-made lake."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.consumption.recommendations import EmbeddingFallback, personal_explore_items
from instarec_assets.ml.graphsage.explore import explore_from_lake


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


def _random_lake(folder: Path, seed: int = 5) -> dict[str, str]:
    """40 users with 1-8 bought products of 60 (every third discontinued), sparse co-purchase lists
    (many users get fewer than 2 co-purchase items) and random embeddings in both framings."""
    rng = np.random.default_rng(seed)
    products = np.arange(1, 61)
    users, bought = [], []
    for user in range(1, 41):
        picked = rng.choice(products, size=rng.integers(1, 9), replace=False)
        users += [user] * picked.size
        bought += picked.tolist()
    anchors = rng.choice(products, size=25, replace=False)
    similar = [
        (int(a), int(b), float(rng.random())) for a in anchors for b in rng.choice(products, 3) if a != b
    ]
    vectors = rng.normal(size=(100, 8)).astype(np.float32)

    def embeddings(path: Path, id_column: str, ids: np.ndarray) -> str:
        rows = [
            (framing, int(i), vectors[(i * 7 + offset) % 100].tolist())
            for offset, framing in enumerate(("target", "serving"))
            for i in ids
        ]
        return _write(
            path,
            {
                "framing": [r[0] for r in rows],
                id_column: [r[1] for r in rows],
                "embedding": [r[2] for r in rows],
            },
        )

    return {
        "user_product_features": _write(
            folder / "upf.parquet",
            {"framing": ["serving"] * len(users), "user_id": users, "product_id": bought},
        ),
        "products": _write(
            folder / "products.parquet",
            {"product_id": products.tolist(), "is_current": [int(p) % 3 != 0 for p in products]},
        ),
        "similar_items": _write(
            folder / "similar.parquet",
            {
                "product_id": [r[0] for r in similar],
                "similar_product_id": [r[1] for r in similar],
                "score": [r[2] for r in similar],
            },
        ),
        "user_embeddings": embeddings(folder / "users.parquet", "user_id", np.arange(1, 41)),
        "product_embeddings": embeddings(folder / "products_emb.parquet", "product_id", products),
    }


@pytest.mark.parametrize("user_ids", [None, [3, 7, 8, 21, 22, 39]])
def test_fallback_for_only_the_short_users_equals_the_fallback_for_everyone(tmp_path, user_ids) -> None:
    world = _random_lake(tmp_path)
    conn = duckdb.connect()
    nearest = explore_from_lake(
        conn,
        world["user_embeddings"],
        world["product_embeddings"],
        world["user_product_features"],
        tmp_path / "nearest.parquet",
    )
    inputs = (world["similar_items"], world["user_product_features"], world["products"])
    everyone = personal_explore_items(
        conn, *inputs, str(nearest.path), tmp_path / "everyone" / "explore.parquet", user_ids=user_ids
    )
    (tmp_path / "short").mkdir()
    short = personal_explore_items(
        conn,
        *inputs,
        EmbeddingFallback(world["user_embeddings"], world["product_embeddings"]),
        tmp_path / "short" / "explore.parquet",
        user_ids=user_ids,
        batch_users=7,
    )
    expected = pq.read_table(everyone.path)
    assert pq.read_table(short.path).to_pylist() == expected.to_pylist()
    assert short.row_count == expected.num_rows
    sources = expected.column("explore_source").to_pylist()
    assert "co-purchase" in sources and "graphsage" in sources  # both paths were exercised
    assert sorted(path.name for path in (tmp_path / "short").iterdir()) == ["explore.parquet"]


def test_equal_sums_rank_by_product_id(tmp_path) -> None:
    # user 1 bought 1 and 2: 5 and 7 score 0.5 from 1, 6 scores 0.25 + 0.25 from both (exact sums)
    lake = {
        "user_product_features": _write(
            tmp_path / "upf.parquet", {"framing": ["serving"] * 2, "user_id": [1, 1], "product_id": [1, 2]}
        ),
        "products": _write(
            tmp_path / "products.parquet", {"product_id": [1, 2, 5, 6, 7], "is_current": [True] * 5}
        ),
        "similar_items": _write(
            tmp_path / "similar.parquet",
            {"product_id": [1, 1, 1, 2], "similar_product_id": [7, 5, 6, 6], "score": [0.5, 0.5, 0.25, 0.25]},
        ),
        "fallback": _write(
            tmp_path / "fallback.parquet",
            {"user_id": [1], "explore_rank": [1], "product_id": [7], "similarity": [0.9]},
        ),
    }
    assert [row[:4] for row in _explore(lake, tmp_path, k=3)] == [
        (1, 1, 5, 0.5),
        (1, 2, 6, 0.5),
        (1, 3, 7, 0.5),
    ]
    assert [row[2] for row in _explore(lake, tmp_path, k=2)] == [5, 6]
