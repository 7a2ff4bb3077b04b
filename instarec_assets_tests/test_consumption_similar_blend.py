"""Similar items blended with product embeddings, and the held-out evaluation that chooses the blend.

Hand-built worlds on real parquet read by DuckDB: eight groups of five products, each shopper buys
within one group. Where the history is too thin for co-occurrence support and the embeddings cluster
the groups, the embeddings help and a blend is chosen; where co-occurrence has full support and the
embeddings are random, co-occurrence alone (w = 0) is chosen.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.consumption.similar_counts import full_counts
from instarec_assets.consumption.similar_items import (
    MIN_SUPPORT,
    blend,
    embedding_neighbours,
    pair_similarity,
    restrict,
    similar_items,
)
from instarec_assets.consumption.similar_items_evaluation import (
    MethodScore,
    choose_weight,
    evaluate_blends,
)
from instarec_assets.ml.graphsage.explore import EmbeddingTable

GROUPS, GROUP_SIZE = 8, 5
PRODUCTS = np.arange(1, GROUPS * GROUP_SIZE + 1)
DISCONTINUED = 41  # bought with group 0 and embedded beside it, but no longer current


def group_of(product: int) -> int:
    return (product - 1) // GROUP_SIZE


def baskets_by_user(fit_orders: int, users_per_group: int, seed: int) -> dict[int, list[list[int]]]:
    """Each user's orders (the last one is the held-out one): three products of the user's group."""
    rng = np.random.default_rng(seed)
    users = {}
    for group in range(GROUPS):
        members = PRODUCTS[group * GROUP_SIZE : (group + 1) * GROUP_SIZE]
        for offset in range(users_per_group):
            user = group * 100 + offset + 1
            orders = [sorted(rng.choice(members, 3, replace=False).tolist()) for _ in range(fit_orders + 1)]
            if group == 0:
                orders[0].append(DISCONTINUED)
            users[user] = orders
    return users


def write_lake(folder: Path, users: dict[int, list[list[int]]], shuffle_seed: int | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    orders, lines = [], []
    order_id = 0
    for user, baskets in users.items():
        for number, basket in enumerate(baskets, start=1):
            order_id += 1
            orders.append((order_id, user, number))
            lines.extend((order_id, product, position) for position, product in enumerate(basket, 1))
    if shuffle_seed is not None:  # the same history read in another order
        np.random.default_rng(shuffle_seed).shuffle(lines)
    o_ids, u_ids, numbers = zip(*orders, strict=True)
    pq.write_table(
        pa.table(
            {
                "order_id": pa.array(o_ids, pa.int32()),
                "user_id": pa.array(u_ids, pa.int32()),
                "order_number": pa.array(numbers, pa.int16()),
            }
        ),
        folder / "orders.parquet",
    )
    l_orders, l_products, positions = zip(*lines, strict=True)
    pq.write_table(
        pa.table(
            {
                "order_id": pa.array(l_orders, pa.int32()),
                "product_id": pa.array(l_products, pa.int32()),
                "add_to_cart_order": pa.array(positions, pa.int16()),
            }
        ),
        folder / "lines.parquet",
    )
    ids = [*PRODUCTS.tolist(), DISCONTINUED]
    pq.write_table(
        pa.table(
            {
                "product_id": pa.array(ids, pa.int32()),
                "product_name": [f"product {i}" for i in ids],
                "aisle_id": pa.array([group_of(i) + 1 for i in ids], pa.int32()),
                "department_id": pa.array([1] * len(ids), pa.int32()),
                "is_current": [i != DISCONTINUED for i in ids],
            }
        ),
        folder / "products.parquet",
    )
    pq.write_table(
        pa.table(
            {"aisle_id": pa.array(range(1, GROUPS + 2), pa.int32()), "aisle": [f"a{i}" for i in range(9)]}
        ),
        folder / "aisles.parquet",
    )
    pq.write_table(
        pa.table({"department_id": pa.array([1], pa.int32()), "department": ["grocery"]}),
        folder / "departments.parquet",
    )
    return {
        "orders": [str(folder / "orders.parquet")],
        "lines": [str(folder / "lines.parquet")],
        "products": str(folder / "products.parquet"),
        "aisles": str(folder / "aisles.parquet"),
        "departments": str(folder / "departments.parquet"),
    }


def clustered_embeddings(seed: int = 1) -> EmbeddingTable:
    """One direction per group plus a little noise; the discontinued product sits in group 0."""
    rng = np.random.default_rng(seed)
    ids = np.array([*PRODUCTS.tolist(), DISCONTINUED])
    centres = np.eye(16)[:GROUPS]
    vectors = np.stack([centres[group_of(1 if i == DISCONTINUED else i)] for i in ids])
    return EmbeddingTable.from_vectors(ids, vectors + rng.normal(0, 0.05, vectors.shape))


def random_embeddings(seed: int = 2) -> EmbeddingTable:
    rng = np.random.default_rng(seed)
    ids = np.array([*PRODUCTS.tolist(), DISCONTINUED])
    return EmbeddingTable.from_vectors(ids, rng.normal(size=(ids.size, 16)))


def evaluate(lake: dict, embeddings: EmbeddingTable | None, counts_in: Path | None = None):
    """evaluate_blends by a recount of the earlier orders, or (counts_in) from the whole history's
    counts written there, as the similar_items asset calls it."""
    with duckdb.connect() as conn:
        if counts_in is None:
            return evaluate_blends(conn, lake["orders"], lake["lines"], lake["products"], embeddings)
        counts = full_counts(conn, lake["lines"], counts_in / "counts.parquet", MIN_SUPPORT)
        return evaluate_blends(
            conn,
            lake["orders"],
            lake["lines"],
            lake["products"],
            embeddings,
            counts_uri=str(counts.staged.path),
            work_dir=counts_in / "work",
        )


def served(lake: dict, out: Path, embeddings: EmbeddingTable | None, weight: float, **kwargs) -> list[dict]:
    with duckdb.connect() as conn:
        staged = similar_items(
            conn,
            lake["lines"],
            lake["products"],
            lake["aisles"],
            lake["departments"],
            out,
            embeddings=embeddings,
            weight=weight,
            **kwargs,
        )
    rows = pq.read_table(staged.path).to_pylist()
    assert staged.row_count == len(rows)
    return rows


@pytest.fixture
def thin_lake(tmp_path: Path) -> dict:
    """Two earlier orders per shopper: most pairs never reach 3 shared baskets."""
    return write_lake(tmp_path / "thin", baskets_by_user(fit_orders=2, users_per_group=3, seed=11))


@pytest.fixture
def rich_lake(tmp_path: Path) -> dict:
    """Ten earlier orders per shopper: every pair within a group is well supported."""
    return write_lake(tmp_path / "rich", baskets_by_user(fit_orders=10, users_per_group=3, seed=12))


def test_embeddings_that_cluster_the_baskets_win_a_blend_and_raise_coverage(thin_lake: dict) -> None:
    evaluation = evaluate(thin_lake, clustered_embeddings())
    scores = {score.weight: score for score in evaluation.scores}
    assert evaluation.embeddings and evaluation.chosen_weight > 0
    assert scores[evaluation.chosen_weight].recall > scores[0.0].recall * 1.01
    assert scores[1.0].method == "embeddings" and scores[0.0].method == "co-occurrence"
    # 24 held-out baskets (one per shopper); thin support leaves some of their products cold
    assert evaluation.held_out_orders == 24 and evaluation.anchors > 30 and evaluation.cold_anchors > 0
    # the embedding neighbours fill the short lists: coverage@10 rises from below half to nearly all
    assert scores[0.0].coverage < 0.5 and scores[evaluation.chosen_weight].coverage > 0.9
    assert "| co-occurrence |" in evaluation.markdown() and "yes" in evaluation.markdown()


def test_random_embeddings_lose_to_co_occurrence_alone(rich_lake: dict) -> None:
    evaluation = evaluate(rich_lake, random_embeddings())
    scores = {score.weight: score for score in evaluation.scores}
    assert evaluation.chosen_weight == 0.0
    assert scores[0.0].recall == pytest.approx(1.0)  # each product's four group mates, all listed
    assert scores[1.0].recall < 0.5
    assert evaluation.cold_anchors == 0


def test_without_embeddings_only_co_occurrence_is_evaluated(thin_lake: dict) -> None:
    evaluation = evaluate(thin_lake, None)
    assert [score.weight for score in evaluation.scores] == [0.0]
    assert evaluation.chosen_weight == 0.0 and not evaluation.embeddings


@pytest.mark.parametrize("from_counts", [False, True], ids=["recount", "from_counts"])
def test_held_out_latest_baskets_never_feed_the_co_occurrence(tmp_path: Path, from_counts: bool) -> None:
    # products 1 and 2 are bought together only in each shopper's latest order
    users = {user: [[3, 4], [3, 4], [3, 4], [1, 2]] for user in (1, 2, 3)}
    lake = write_lake(tmp_path / "split", users)
    evaluation = evaluate(lake, None, tmp_path / "counts" if from_counts else None)
    [co_occurrence] = evaluation.scores
    assert evaluation.held_out_orders == 3 and evaluation.anchors == 2 and evaluation.cold_anchors == 2
    assert co_occurrence.hit_rate == 0.0 and co_occurrence.recall == 0.0
    # the served table, built from the whole history, does list the pair
    rows = served(lake, tmp_path / "served.parquet", None, 0.0)
    assert {(row["product_id"], row["similar_product_id"]) for row in rows} == {
        (1, 2),
        (2, 1),
        (3, 4),
        (4, 3),
    }


@pytest.mark.parametrize("embeddings", [clustered_embeddings, random_embeddings, lambda: None])
@pytest.mark.parametrize("fit_orders", [2, 10])
def test_evaluation_from_the_history_counts_equals_the_recount(
    tmp_path: Path, embeddings, fit_orders
) -> None:
    users = baskets_by_user(fit_orders=fit_orders, users_per_group=3, seed=20 + fit_orders)
    lake = write_lake(tmp_path / "lake", users)
    recounted = evaluate(lake, embeddings())
    assert evaluate(lake, embeddings(), tmp_path / "counts") == recounted
    assert recounted.anchors > 0 and recounted.scores[0].recall > 0


def test_evaluation_from_counts_needs_a_work_dir(thin_lake: dict) -> None:
    with duckdb.connect() as conn, pytest.raises(ValueError, match="counts_uri needs a work_dir"):
        evaluate_blends(
            conn, thin_lake["orders"], thin_lake["lines"], thin_lake["products"], None, counts_uri="x"
        )


def test_blend_serves_neighbours_for_cold_products_never_self_nor_discontinued(
    thin_lake: dict, tmp_path: Path
) -> None:
    rows = served(thin_lake, tmp_path / "blend.parquet", clustered_embeddings(), 0.2, top_k=10)
    assert rows and all(row["product_id"] != row["similar_product_id"] for row in rows)
    listed = {row["product_id"] for row in rows} | {row["similar_product_id"] for row in rows}
    assert DISCONTINUED not in listed and listed <= set(PRODUCTS.tolist())
    assert all(0.0 <= row["score"] <= 1.0 for row in rows)
    by_product: dict[int, list[dict]] = {}
    for row in rows:
        by_product.setdefault(row["product_id"], []).append(row)
    assert set(by_product) == set(PRODUCTS.tolist())  # every current product, cold ones included
    for product, items in by_product.items():
        assert [item["rank"] for item in items] == list(range(1, len(items) + 1))
        # the four group mates first: shared baskets or the closest embeddings
        assert {item["similar_product_id"] for item in items[:4]} == {
            p for p in PRODUCTS.tolist() if group_of(p) == group_of(product) and p != product
        }
        assert [item["score"] for item in items] == sorted((item["score"] for item in items), reverse=True)
    filled = [row for row in rows if row["together"] == 0]
    assert filled and all(row["cooccurrence"] == 0 and row["similarity"] > 0 for row in filled)


def test_weight_zero_is_exactly_co_occurrence_alone(thin_lake: dict, tmp_path: Path) -> None:
    plain = served(thin_lake, tmp_path / "plain.parquet", None, 0.0)
    with_embeddings = served(thin_lake, tmp_path / "zero.parquet", clustered_embeddings(), 0.0)
    key = ("product_id", "rank", "similar_product_id", "score", "together")
    assert [tuple(row[k] for k in key) for row in with_embeddings] == [
        tuple(row[k] for k in key) for row in plain
    ]
    assert all(row["together"] >= 3 for row in plain)


def test_same_history_in_another_order_gives_the_same_rows(tmp_path: Path) -> None:
    users = baskets_by_user(fit_orders=2, users_per_group=3, seed=11)
    first = write_lake(tmp_path / "a", users)
    shuffled = write_lake(tmp_path / "b", users, shuffle_seed=5)
    table = clustered_embeddings()
    rows = served(first, tmp_path / "a.parquet", table, 0.5)
    assert rows == served(shuffled, tmp_path / "b.parquet", table, 0.5)
    assert rows == served(first, tmp_path / "c.parquet", table, 0.5)
    assert evaluate(first, table) == evaluate(shuffled, table)


def test_ties_break_on_product_id() -> None:
    # anchor 1 has three neighbours at the same cosine and no co-occurrence
    table = EmbeddingTable.from_vectors(np.array([4, 1, 3, 2]), np.array([[1.0, 0], [1, 0], [1, 0], [1, 0]]))
    empty = {
        name: np.zeros(
            0, dtype=np.int64 if name in ("product_id", "similar_product_id", "together") else float
        )
        for name in ("product_id", "similar_product_id", "together", "cooccurrence", "lift")
    }
    ranked = blend(empty, 1.0, 2, table, embedding_neighbours(table, 3))
    assert list(zip(ranked.product_id, ranked.similar_product_id, ranked.rank, strict=True)) == [
        (1, 2, 1),
        (1, 3, 2),
        (2, 1, 1),
        (2, 3, 2),
        (3, 1, 1),
        (3, 2, 2),
        (4, 1, 1),
        (4, 2, 2),
    ]


def test_neighbours_match_a_full_sort_whatever_the_block_size() -> None:
    rng = np.random.default_rng(3)
    table = EmbeddingTable.from_vectors(np.arange(10, 310), rng.normal(size=(300, 8)))
    small = embedding_neighbours(table, 5, block_rows=7)
    assert np.array_equal(small[0], embedding_neighbours(table, 5, block_rows=1000)[0])
    cosines = table.vectors @ table.vectors.T
    np.fill_diagonal(cosines, -np.inf)
    expected = np.sort(table.ids[np.argsort(-cosines, axis=1)[:, :5]], axis=1)
    found = np.sort(small[1].reshape(300, 5), axis=1)
    assert np.array_equal(found, expected)
    assert not np.any(small[0] == small[1])


def test_restrict_and_pair_similarity_drop_non_current_and_zero_vectors() -> None:
    table = EmbeddingTable.from_vectors(np.array([1, 2, 3]), np.array([[1.0, 0], [0, 0], [1, 1]]))
    kept = restrict(table, np.array([1, 2, 3, 9]))
    assert kept.ids.tolist() == [1, 3]
    cos = pair_similarity(kept, np.array([1, 1, 9]), np.array([3, 2, 1]))
    assert cos.tolist() == [pytest.approx(2**-0.5, abs=1e-6), 0.0, 0.0]


def test_choose_weight_needs_a_real_gain_over_co_occurrence() -> None:
    def score(weight: float, recall: float) -> MethodScore:
        return MethodScore("m", weight, 0.5, recall, 0.5)

    assert choose_weight([score(0.0, 0.300), score(0.1, 0.302)]) == 0.0  # within 1%: noise
    assert choose_weight([score(0.0, 0.300), score(0.1, 0.35), score(0.5, 0.35)]) == 0.1  # tie: smaller
    assert choose_weight([score(0.0, 0.0), score(1.0, 0.01)]) == 1.0


def test_bad_weight_names_itself(thin_lake: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weight must be between 0 and 1, got 1\.5"):
        served(thin_lake, tmp_path / "bad.parquet", None, 1.5)
