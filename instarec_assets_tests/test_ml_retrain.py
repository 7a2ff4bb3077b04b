"""The retrain policy: each rule of decide(), PSI against a stored profile (hand-computed), graph drift."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from instarec_assets.ml.retrain import (
    PSI_EPSILON,
    RetrainPolicy,
    decide,
    feature_profile,
    graph_drift,
    population_stability,
    psi,
)

POLICY = RetrainPolicy(every_batches=3, max_age_days=28, drift_threshold=0.2)


def test_no_earlier_model_trains_the_first():
    decision = decide(POLICY, None, "2025-01-06", 0, float("nan"))
    assert decision.retrain and decision.reason.startswith("first model")
    assert decision.trained_on_batch == "2025-01-06" and decision.batches_since == 0


def test_keeps_while_every_rule_is_within_its_limit():
    decision = decide(POLICY, "2025-01-06", "2025-01-13", 1, 0.05, {"worst": "u_orders"})
    assert not decision.retrain
    assert (
        decision.reason == "kept the model fitted on 2025-01-06: 1/3 batches, 7/28 days, drift 0.0500 < 0.2"
    )
    assert decision.trained_on_batch == "2025-01-06" and decision.age_days == 7


def test_the_batch_rule_fires_at_every_batches():
    decision = decide(POLICY, "2025-01-06", "2025-01-20", 3, 0.0)
    assert decision.retrain and decision.reason.startswith("batches: 3 batches since")
    assert decision.trained_on_batch == "2025-01-20"


def test_the_age_rule_counts_days_between_batch_dates():
    decision = decide(POLICY, "2025-01-06", "2025-02-03", 1, 0.0)
    assert decision.retrain and decision.age_days == 28 and decision.reason.startswith("age: ")
    assert not decide(POLICY, "2025-01-06", "2025-02-02", 1, 0.0).retrain


def test_the_drift_rule_names_the_worst_feature():
    decision = decide(POLICY, "2025-01-06", "2025-01-13", 1, 0.25, {"worst": "p_orders"})
    assert decision.retrain and decision.reason == "drift: 0.2500 (p_orders) >= threshold 0.2"
    # an unmeasured drift never fires the rule
    assert not decide(POLICY, "2025-01-06", "2025-01-13", 1, float("nan")).retrain


def test_zero_turns_a_rule_off_and_force_and_unusable_always_retrain():
    off = RetrainPolicy(every_batches=0, max_age_days=0, drift_threshold=0)
    decision = decide(off, "2025-01-06", "2026-01-06", 50, 9.0)
    assert not decision.retrain and decision.reason.endswith("no rule enabled")
    assert off.describe() == "never after the first model"
    forced = decide(off, "2025-01-06", "2025-01-13", 1, 0.0, force=True)
    assert forced.retrain and "force_retrain" in forced.reason
    broken = decide(POLICY, "2025-01-06", "2025-01-13", 1, 0.0, unusable="features changed")
    assert broken.retrain and broken.reason.endswith("cannot be kept: features changed")
    with pytest.raises(ValueError):
        RetrainPolicy(every_batches=-1)


def test_the_decision_is_json_ready():
    decision = decide(POLICY, "2025-01-06", "2025-01-13", 1, float("nan"))
    assert json.loads(json.dumps(decision.as_dict()))["drift"] is None


def test_psi_of_two_bins_by_hand():
    # reference [0, 0, 1, 1]: the median edge is 1, shares 0.5 | 0.5 | NaN 0
    profile = feature_profile(np.array([[0.0], [0.0], [1.0], [1.0]]), ["x"], bins=2)
    assert profile["features"]["x"] == {"edges": [1.0], "shares": [0.5, 0.5, 0.0]}
    # current [0, 1, 1, 1]: 0.25 | 0.75 -> (0.25-0.5) ln(0.25/0.5) + (0.75-0.5) ln(0.75/0.5)
    drift, detail = population_stability(np.array([[0.0], [1.0], [1.0], [1.0]]), ["x"], profile)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert drift == pytest.approx(expected) and drift == pytest.approx(0.274653, abs=1e-6)
    assert detail["worst"] == "x" and detail["top"][0]["feature"] == "x"


def test_psi_counts_nan_as_its_own_bin_and_is_zero_for_the_same_rows():
    reference = np.array([[0.0, 5.0], [0.0, 5.0], [1.0, 5.0], [1.0, 5.0]])
    profile = feature_profile(reference, ["x", "constant"], bins=2)
    same, _ = population_stability(reference, ["x", "constant"], profile)
    assert same == 0.0
    current = np.array([[0.0, 5.0], [np.nan, 5.0], [1.0, 5.0], [np.nan, 5.0]])
    drift, detail = population_stability(current, ["x", "constant"], profile)
    # x: 0.25 | 0.25 | NaN 0.5 against 0.5 | 0.5 | 0 (floored at epsilon)
    expected = 2 * (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert drift == pytest.approx(expected)
    assert [item["feature"] for item in detail["top"]] == ["x", "constant"]
    assert detail["top"][1]["psi"] == 0.0
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_features_missing_from_the_profile_are_reported():
    profile = feature_profile(np.zeros((4, 1)), ["x"])
    _, detail = population_stability(np.zeros((4, 2)), ["x", "new"], profile)
    assert detail["not_in_reference"] == ["new"]


def test_graph_drift_is_the_share_of_new_edges():
    share, detail = graph_drift(
        {"users": 100, "products": 50, "edges": 750}, {"users": 110, "products": 55, "edges": 1000}
    )
    assert share == 0.25 and detail["edges_trained"] == 750 and detail["users_now"] == 110
    assert graph_drift({"edges": 10}, {"edges": 0})[0] == 0.0
