"""with_popular_tier on a handmade lake: shoppers without a scored candidate get popular items,
tilted to the departments of a first basket, appended after what they have, current products only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.consumption.cold_start import ColdStartInputs, with_popular_tier
from instarec_assets.serving.filters import apply_filters, parse_filters

DEPARTMENTS = {1: "produce", 2: "dairy", 3: "bakery"}
PRODUCTS = range(1, 91)  # product p is in department (p - 1) % 3 + 1; lower ids are more popular
WARM_USERS = range(1, 6)
FIRST_BASKET_USER = 100  # one order, two dairy lines, nothing scored
NEW_USER = 101  # an order in the latest batch, its lines not landed yet
EXPLORE_ONLY_USER = 102  # no scored candidate, one explore item


def department_of(product_id: int) -> int:
    return (product_id - 1) % 3 + 1


def _write(path: Path, columns: dict) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.fixture
def lake(tmp_path: Path) -> dict:
    # 99 history baskets of the warm users (and one first basket: 100); product p is in the first 100 - p of them
    lines = [(order, p) for p in PRODUCTS for order in range(1, 101 - p)]
    lines += [(200, 50), (200, 53)]  # the first basket of FIRST_BASKET_USER: two dairy products
    orders_1 = {
        "order_id": pa.array([*range(1, 100), 200, 300], pa.int32()),
        "user_id": pa.array(
            [order % 5 + 1 for order in range(1, 100)] + [FIRST_BASKET_USER, EXPLORE_ONLY_USER], pa.int32()
        ),
    }
    orders_2 = {"order_id": pa.array([400], pa.int32()), "user_id": pa.array([NEW_USER], pa.int32())}
    # product 1 (the most popular) is discontinued: its only row is not current
    products = {
        "product_id": pa.array(list(PRODUCTS), pa.int32()),
        "product_name": [f"P{p}" for p in PRODUCTS],
        "aisle_id": [department_of(p) for p in PRODUCTS],
        "department_id": [department_of(p) for p in PRODUCTS],
        "is_current": [p != 1 for p in PRODUCTS],
    }
    # what top_recommendations wrote: warm users' model rows, the explore-only user's explore item
    served = [(user, 1, 10 + user, "model", False) for user in WARM_USERS]
    served += [(user, 2, 20 + user, "explore", True) for user in WARM_USERS]
    served += [(EXPLORE_ONLY_USER, 1, 6, "explore", True)]
    recommendations = {
        "user_id": pa.array([row[0] for row in served], pa.int32()),
        "rank": pa.array([row[1] for row in served], pa.int8()),
        "product_id": pa.array([row[2] for row in served], pa.int32()),
        "product_name": [f"P{row[2]}" for row in served],
        "aisle": [DEPARTMENTS[department_of(row[2])] for row in served],
        "department": [DEPARTMENTS[department_of(row[2])] for row in served],
        "probability": [0.5] * len(served),
        "explore": [row[4] for row in served],
        "model_version": ["model-1"] * len(served),
        "source": [row[3] for row in served],
    }
    return {
        "recommendations": _write(tmp_path / "recommendations.parquet", recommendations),
        "inputs": ColdStartInputs(
            orders=[
                _write(tmp_path / "orders_1.parquet", orders_1),
                _write(tmp_path / "orders_2.parquet", orders_2),
            ],
            order_products=[
                _write(
                    tmp_path / "order_products.parquet",
                    {
                        "order_id": pa.array([o for o, _ in lines], pa.int32()),
                        "product_id": pa.array([p for _, p in lines], pa.int32()),
                    },
                )
            ],
            products=_write(tmp_path / "products.parquet", products),
            aisles=_write(
                tmp_path / "aisles.parquet",
                {"aisle_id": list(DEPARTMENTS), "aisle": list(DEPARTMENTS.values())},
            ),
            departments=_write(
                tmp_path / "departments.parquet",
                {"department_id": list(DEPARTMENTS), "department": list(DEPARTMENTS.values())},
            ),
        ),
    }


def _run(lake: dict, tmp_path: Path, name: str = "out.parquet") -> list[tuple]:
    out = tmp_path / name
    with duckdb.connect() as conn:
        with_popular_tier(conn, lake["recommendations"], lake["inputs"], "model-1", out)
    return duckdb.sql(
        "SELECT user_id, rank, product_id, department, probability, explore, source, model_version "
        f"FROM read_parquet('{out}') ORDER BY user_id, rank"
    ).fetchall()


def _list(rows: list[tuple], user: int) -> list[tuple]:
    return [row for row in rows if row[0] == user]


def test_a_new_user_gets_overall_popularity_and_never_a_discontinued_product(lake, tmp_path) -> None:
    rows = _list(_run(lake, tmp_path), NEW_USER)
    assert [row[1] for row in rows] == list(range(1, 53))  # 52 ranks, like a warm list
    # the most popular products in order, product 1 (discontinued) left out
    assert [row[2] for row in rows] == list(range(2, 54))
    assert {row[6] for row in rows} == {"popular"}
    assert not any(row[5] for row in rows)
    # the probability is the product's basket rate: product 2 is in 98 of the 99 baskets holding a
    # current product (order 99 holds only the discontinued product 1)
    assert rows[0][4] == 98 / 99
    assert [row[4] for row in rows] == sorted((row[4] for row in rows), reverse=True)


def test_a_first_basket_tilts_the_list_to_its_departments(lake, tmp_path) -> None:
    rows = _list(_run(lake, tmp_path), FIRST_BASKET_USER)
    assert len(rows) == 52
    # both first-basket lines are dairy: the head of the list is dairy, although produce and bakery
    # products are as popular overall (the new user's head alternates departments)
    assert {row[3] for row in rows[:10]} == {"dairy"}
    assert [row[2] for row in rows[:3]] == [2, 5, 8]
    new_user_head = _list(_run(lake, tmp_path, "again.parquet"), NEW_USER)[:10]
    assert {row[3] for row in new_user_head} == {"produce", "dairy", "bakery"}
    # the other departments still follow, so the shopper can find them
    assert {row[3] for row in rows} == {"produce", "dairy", "bakery"}
    assert 1 not in [row[2] for row in rows]


def test_popular_items_follow_what_a_cold_user_already_has(lake, tmp_path) -> None:
    rows = _list(_run(lake, tmp_path), EXPLORE_ONLY_USER)
    assert rows[0][1:3] == (1, 6) and rows[0][6] == "explore" and rows[0][5]
    assert [row[1] for row in rows] == list(range(1, 53))
    assert {row[6] for row in rows[1:]} == {"popular"}
    assert 6 not in [row[2] for row in rows[1:]]  # never twice on one list


def test_warm_users_are_unchanged_and_unknown_users_get_nothing(lake, tmp_path) -> None:
    rows = _run(lake, tmp_path)
    for user in WARM_USERS:
        assert [(row[1], row[2], row[6]) for row in _list(rows, user)] == [
            (1, 10 + user, "model"),
            (2, 20 + user, "explore"),
        ]
    assert {row[0] for row in rows} == {*WARM_USERS, FIRST_BASKET_USER, NEW_USER, EXPLORE_ONLY_USER}
    assert {row[7] for row in rows} == {"model-1"}


def test_a_filtered_answer_still_has_k_items(lake, tmp_path) -> None:
    rows = _list(_run(lake, tmp_path), FIRST_BASKET_USER)
    # the serving filter over the stored rows (department at index 4 of (rank, product_id, name, aisle, department))
    stored = [(row[1], row[2], f"P{row[2]}", row[3], row[3]) for row in rows]
    kept = apply_filters(stored, parse_filters({"exclude_departments": "dairy"}), 10)
    assert len(kept) == 10
    assert "dairy" not in {row[4] for row in kept}


def test_a_scope_without_cold_users_keeps_the_rows_and_reads_no_lines(lake, tmp_path) -> None:
    """A delta batch whose users all have model rows: their lists exactly as with the history read,
    and the order lines are not read at all (a missing lines file would fail the query otherwise)."""
    scope = _write(tmp_path / "warm.parquet", {"user_id": pa.array(sorted(WARM_USERS), pa.int32())})
    inputs = replace(lake["inputs"], users=scope)
    with_lines = _run({**lake, "inputs": inputs}, tmp_path, "with_lines.parquet")
    unread = replace(inputs, order_products=[str(tmp_path / "no-such-lines.parquet")])
    assert _run({**lake, "inputs": unread}, tmp_path, "without.parquet") == with_lines
    assert "popular" not in {row[6] for row in with_lines}  # the explore-only user is out of scope


def test_reruns_give_identical_rows(lake, tmp_path) -> None:
    assert _run(lake, tmp_path, "first.parquet") == _run(lake, tmp_path, "second.parquet")


def test_bad_parameters_are_named(lake, tmp_path) -> None:
    with duckdb.connect() as conn, pytest.raises(ValueError, match="max_rank must be at least 1"):
        with_popular_tier(
            conn, lake["recommendations"], lake["inputs"], "m", tmp_path / "x.parquet", max_rank=0
        )
