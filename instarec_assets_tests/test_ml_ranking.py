"""Ranking metrics and baselines, each checked against numbers worked out by hand on tiny cases."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from instarec_assets.ml.ranking import (
    compare_reports,
    last_order_baseline,
    personal_frequency_baseline,
    popularity_baseline,
    ranking_metrics,
    ranking_table,
)


def _frame(rows: list[tuple], columns: str) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns.split())


# user 1 buys {10, 20} next and is shown 10, 30, 20; user 2 buys {40} and is shown 50, 60.
RECOMMENDATIONS = _frame(
    [(1, 10, 1), (1, 30, 2), (1, 20, 3), (2, 50, 1), (2, 60, 2)], "user_id product_id rank"
)
ACTUAL = _frame([(1, 10), (1, 20), (2, 40)], "user_id product_id")
HISTORY = _frame([(1, 10, 3), (1, 30, 1), (2, 50, 2)], "user_id product_id n_orders")


def test_metrics_at_k_match_a_hand_computation() -> None:
    result = ranking_metrics("m", RECOMMENDATIONS, ACTUAL, HISTORY, catalogue_size=10)
    ndcg_user1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert result.n_users == 2
    assert result.at_k[3] == pytest.approx(
        {"precision": (2 / 3) / 2, "recall": 0.5, "ndcg": ndcg_user1 / 2, "hit_rate": 0.5}
    )
    assert result.at_k[10] == pytest.approx(
        {"precision": (2 / 10) / 2, "recall": 0.5, "ndcg": ndcg_user1 / 2, "hit_rate": 0.5}
    )
    # user 1: hits at ranks 1 and 3 -> (1/1 + 2/3) / 2; user 2: 0.
    assert result.map_at_10 == pytest.approx((1 + 2 / 3) / 2 / 2)
    assert result.coverage == pytest.approx(5 / 10)
    assert result.repeat_share == pytest.approx(3 / 5)  # 10, 30 (user 1) and 50 (user 2)
    assert result.explore_share == pytest.approx(2 / 5)
    assert result.explore_hit_rate == pytest.approx(1 / 2)  # user 1's explore item 20 was bought


def test_a_user_without_a_list_counts_as_all_misses_and_recall_uses_the_whole_order() -> None:
    actual = pd.concat([ACTUAL, _frame([(3, 70), (3, 71), (3, 72), (3, 73)], "user_id product_id")])
    recommendations = pd.concat([RECOMMENDATIONS, _frame([(3, 70, 1)], "user_id product_id rank")])
    result = ranking_metrics("m", recommendations, actual, HISTORY, catalogue_size=100, ks=(3,))
    assert result.n_users == 3
    assert result.at_k[3]["recall"] == pytest.approx((1 + 0 + 1 / 4) / 3)
    assert result.at_k[3]["hit_rate"] == pytest.approx(2 / 3)
    # user 3: one hit at rank 1 of 4 relevant -> AP = 1 / min(4, 10)
    assert result.map_at_10 == pytest.approx(((1 + 2 / 3) / 2 + 0 + 1 / 4) / 3)
    unseen = ranking_metrics("m", recommendations, _frame([(9, 1)], "user_id product_id"), HISTORY, 100)
    assert unseen.at_k[10]["ndcg"] == 0.0 and unseen.coverage == 0.0


def test_only_the_top_k_count_and_rank_order_decides() -> None:
    shuffled = RECOMMENDATIONS.sample(frac=1.0, random_state=1)
    assert ranking_metrics("m", shuffled, ACTUAL, HISTORY, 10) == ranking_metrics(
        "m", RECOMMENDATIONS, ACTUAL, HISTORY, 10
    )
    late = _frame(
        [(1, product, product - 100) for product in range(101, 111)] + [(1, 10, 11)],
        "user_id product_id rank",
    )
    result = ranking_metrics("m", late, ACTUAL.loc[ACTUAL.user_id == 1], HISTORY, 1000)
    assert result.at_k[10]["hit_rate"] == 0.0  # product 10 is 11th
    with pytest.raises(ValueError, match="catalogue_size must be positive"):
        ranking_metrics("m", RECOMMENDATIONS, ACTUAL, HISTORY, 0)


def test_baselines() -> None:
    history = _frame(
        [(1, 10, 3), (1, 20, 5), (1, 30, 5), (2, 10, 1), (2, 40, 2), (3, 10, 1), (3, 40, 1)],
        "user_id product_id n_orders",
    )
    popular = popularity_baseline(history, [1, 2], k=2)
    assert popular.values.tolist() == [[1, 10, 1], [1, 40, 2], [2, 10, 1], [2, 40, 2]]
    personal = personal_frequency_baseline(history, k=2)
    assert personal.values.tolist() == [
        [1, 20, 1],
        [1, 30, 2],
        [2, 40, 1],
        [2, 10, 2],
        [3, 10, 1],
        [3, 40, 2],
    ]
    last = last_order_baseline(_frame([(1, 10), (1, 99), (2, 40)], "user_id product_id"), history, k=10)
    assert last.values.tolist() == [[1, 10, 1], [1, 99, 2], [2, 40, 1]]


def test_table_and_comparison_with_a_previous_report() -> None:
    table = ranking_table([ranking_metrics("m", RECOMMENDATIONS, ACTUAL, HISTORY, 10)])
    assert list(table.columns[:3]) == ["method", "users", "precision@3"]
    assert compare_reports(table, None) is table
    compared = compare_reports(table, {"m": {"ndcg@10": 0.25}})
    assert compared["ndcg@10 change"].iloc[0] == pytest.approx(table["ndcg@10"].iloc[0] - 0.25)
