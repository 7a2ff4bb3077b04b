"""The ranking report's pieces on hand-made cases, and its blocking check in Dagster passing and failing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from dagster import AssetCheckSeverity, AssetCheckSpec, AssetKey, Output, asset, materialize

from instarec_assets.assets.consumption import RANKING_CHECK, ranking_check_result
from instarec_assets.consumption.ranking_report import (
    METHODS,
    SERVED,
    TOP_FREQUENCY,
    beats_top_frequency,
    compare_with_previous,
    graphsage_ranking,
    plot_report,
    validation_users,
)
from instarec_assets.ml.metrics import PNG_SIGNATURE
from instarec_assets.ml.ranking import PairedDifference
from instarec_assets.ml.training import split_users


def _table(served_ndcg: float, frequency_ndcg: float) -> pd.DataFrame:
    rows = []
    for method in METHODS:
        ndcg = {SERVED: served_ndcg, TOP_FREQUENCY: frequency_ndcg}.get(method, 0.1)
        rows.append({"method": method, "users": 4, "ndcg@10": ndcg, "recall@10": 0.5, "map@10": 0.2})
    return pd.DataFrame(rows)


def test_graphsage_ranks_by_the_link_score_dot_product_ties_to_the_smaller_product() -> None:
    users = np.array([7, 8])
    user_vectors = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    products = np.array([30, 10, 20])
    # product 30: (3, 1); 10: (1, 1); 20: (1, 3)
    product_vectors = np.array([[3.0, 1.0], [1.0, 1.0], [1.0, 3.0]], dtype=np.float32)
    ranked = graphsage_ranking(users, user_vectors, products, product_vectors, k=2, chunk_users=1)
    # user 7 scores: 30 -> 3, 10 -> 1, 20 -> 1 (tie: 10 first); user 8: 20 -> 6, 30 -> 2, 10 -> 2
    assert ranked.values.tolist() == [[7, 30, 1], [7, 10, 2], [8, 20, 1], [8, 10, 2]]


def test_graphsage_ranking_equals_a_full_stable_sort_with_ties_and_nans() -> None:
    rng = np.random.default_rng(3)
    users = np.arange(100, 137)
    products = rng.permutation(np.arange(1000, 1060))
    user_vectors = rng.integers(0, 2, (users.size, 3)).astype(np.float32)
    product_vectors = rng.integers(0, 3, (products.size, 3)).astype(np.float32)  # many equal scores
    user_vectors[5] = np.nan  # scores NaN: ranked last, as the full sort ranks them
    ranked = graphsage_ranking(users, user_vectors, products, product_vectors, k=7, chunk_users=8)
    order = np.argsort(products, kind="stable")
    scores = user_vectors @ product_vectors[order].T
    expected = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), axis=1, kind="stable")[:, :7]
    assert ranked["product_id"].to_numpy().tolist() == products[order][expected].reshape(-1).tolist()
    assert ranked["rank"].tolist() == list(range(1, 8)) * users.size
    no_products = graphsage_ranking(users, user_vectors, products[:0], product_vectors[:0])
    assert no_products.empty


def test_validation_users_are_the_users_training_held_out() -> None:
    rows = np.repeat(np.array([5, 3, 9, 1, 12, 40, 41, 42, 43, 44]), 3)
    card = {"data_split": {"validation_fraction": 0.3, "seed": 7}}
    _, held_out_rows = split_users(rows, 0.3, 7)
    assert validation_users(rows, card).tolist() == sorted(set(rows[held_out_rows].tolist()))
    assert validation_users(rows, card).size == 3


def test_beats_top_frequency_names_both_scores_and_the_noise() -> None:
    verdict = beats_top_frequency(_table(0.51, 0.50), PairedDifference(0.01, 0.02, 19))
    assert verdict.passed and not verdict.blocks
    assert verdict.line == (
        "served ranking NDCG@10 0.5100 beats personal top-frequency 0.5000 "
        "(difference +0.0100 +/- 0.0200 (standard error over 19 users))"
    )
    tie = beats_top_frequency(_table(0.5, 0.5))
    assert not tie.passed and tie.blocks  # a tie does not beat the baseline; no spread known: blocks
    assert (
        tie.line
        == "served ranking NDCG@10 0.5000 does not beat personal top-frequency 0.5000 (difference +0.0000)"
    )


def test_not_beating_top_frequency_blocks_only_beyond_two_standard_errors() -> None:
    within = beats_top_frequency(_table(0.4996, 0.5), PairedDifference(-0.0004, 0.0219, 19))
    assert not within.passed and not within.blocks
    assert within.line.endswith("users)): within 2 standard errors, a warning, not a block")
    edge = beats_top_frequency(_table(0.46, 0.5), PairedDifference(-0.04, 0.02, 50))
    assert not edge.passed and not edge.blocks  # exactly 2 standard errors: still noise
    worse = beats_top_frequency(_table(0.45, 0.5), PairedDifference(-0.05, 0.02, 50))
    assert not worse.passed and worse.blocks
    assert worse.line.endswith("users)): more than 2 standard errors worse")


def test_comparison_with_the_previous_report_gives_changes_per_method() -> None:
    table = _table(0.6, 0.5)
    previous = {SERVED: {"ndcg@10": 0.55, "recall@10": 0.5}, TOP_FREQUENCY: {"ndcg@10": None}}
    compared = compare_with_previous(table, previous).set_index("method")
    assert compared.at[SERVED, "ndcg@10 change"] == pytest.approx(0.05)
    assert compared.at[SERVED, "recall@10 change"] == pytest.approx(0.0)
    assert math.isnan(compared.at[TOP_FREQUENCY, "ndcg@10 change"])  # the previous had no value
    assert math.isnan(compared.at[METHODS[2], "map@10 change"])  # the previous had no such method
    first = compare_with_previous(table, None)
    assert first["ndcg@10 change"].isna().all()
    assert list(first.columns[:3]) == ["method", "ndcg@10", "ndcg@10 change"]


def test_report_plot_is_a_png(tmp_path) -> None:
    path = plot_report(_table(0.6, 0.5), tmp_path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def _materialize_with(table: pd.DataFrame, difference: PairedDifference | None = None):
    @asset(
        name="ranking_report",
        check_specs=[AssetCheckSpec(RANKING_CHECK, asset="ranking_report", blocking=True)],
    )
    def report():
        yield Output(1)
        yield ranking_check_result(table, difference)

    @asset(deps=[report])
    def downstream() -> None:
        return None

    return materialize([report, downstream], raise_on_error=False)


def test_ranking_check_passes_and_lets_downstream_run() -> None:
    result = _materialize_with(_table(0.6, 0.5), PairedDifference(0.1, 0.03, 40))
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == RANKING_CHECK and evaluation.passed is True
    assert evaluation.metadata["served_ndcg_at_10"].value == pytest.approx(0.6)
    assert evaluation.metadata["paired_difference_standard_error"].value == pytest.approx(0.03)
    assert evaluation.metadata["users"].value == 40
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized == {AssetKey("ranking_report"), AssetKey("downstream")}


def test_ranking_check_fails_as_an_error_and_blocks_downstream() -> None:
    result = _materialize_with(_table(0.45, 0.5))
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed is False
    assert evaluation.severity == AssetCheckSeverity.ERROR
    assert evaluation.description == (
        "served ranking NDCG@10 0.4500 does not beat personal top-frequency 0.5000 (difference -0.0500)"
    )
    assert evaluation.metadata["top_frequency_ndcg_at_10"].value == pytest.approx(0.5)
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized == {AssetKey("ranking_report")}


def test_ranking_check_within_noise_warns_and_lets_downstream_run() -> None:
    result = _materialize_with(_table(0.4996, 0.5), PairedDifference(-0.0004, 0.0219, 19))
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed is False
    assert evaluation.severity == AssetCheckSeverity.WARN
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized == {AssetKey("ranking_report"), AssetKey("downstream")}
