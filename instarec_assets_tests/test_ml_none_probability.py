"""P(None) calibrated on held-out users: features by hand, the held-out choice, the JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from instarec_assets.ml.none_probability import (
    NONE_FEATURES,
    NoneCalibration,
    choose_none_probability,
    empty_order_labels,
    none_probabilities,
    order_none_features,
)


def _orders(seed: int, users: int, skip_share: float) -> pd.DataFrame:
    """Candidate rows of one target order per user. With probability `skip_share` an order reorders
    nothing whatever its predictions say (correlated emptiness, as real shoppers' baskets show);
    otherwise each candidate is bought independently with its stated probability."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 25, size=users)
    user_ids = np.repeat(np.arange(1, users + 1), sizes)
    p = rng.beta(0.6, 2.5, size=user_ids.size)
    skips = rng.random(users) < skip_share
    bought = (rng.random(user_ids.size) < p) & ~np.repeat(skips, sizes)
    return pd.DataFrame(
        {
            "user_id": user_ids,
            "order_id": user_ids + 10_000,
            "product_id": rng.integers(1, 50_000, size=user_ids.size),
            "label": bought.astype(np.int64),
            "probability": p,
        }
    )


def test_order_features_by_hand() -> None:
    rows = pd.DataFrame({"order_id": [7, 7, 9], "probability": [0.5, 0.2, 0.0]})
    features = order_none_features(rows)
    assert features.index.tolist() == [7, 9]
    assert features.loc[7, "log_p_empty"] == pytest.approx(np.log(0.5 * 0.8))
    assert features.loc[7, "p_sum"] == pytest.approx(0.7)
    assert features.loc[7, "p_max"] == 0.5
    assert features.loc[7, "n_candidates"] == 2.0
    assert features.loc[9, "log_p_empty"] == 0.0
    labels = empty_order_labels(pd.DataFrame({"order_id": [7, 7, 9], "label": [0, 1, 0]}))
    assert labels.to_dict() == {7: 0, 9: 1}


def test_correlated_empty_baskets_choose_the_calibration_and_raise_f1() -> None:
    choice = choose_none_probability(_orders(seed=1, users=6_000, skip_share=0.35), seed=0)
    assert choice.use_calibrated, choice.reason
    assert choice.f1_calibrated > choice.f1_independent + 2 * choice.f1_difference_se
    assert choice.log_loss_calibrated < choice.log_loss_independent
    assert choice.fit_orders + choice.eval_orders == 6_000


def test_independent_baskets_keep_independence() -> None:
    choice = choose_none_probability(_orders(seed=2, users=6_000, skip_share=0.0), seed=0)
    assert not choice.use_calibrated, choice.reason
    assert "not more than 2 standard errors" in choice.reason


def test_too_few_orders_keep_independence_and_say_why() -> None:
    choice = choose_none_probability(_orders(seed=3, users=300, skip_share=0.35), seed=0)
    assert not choice.use_calibrated
    assert choice.calibration is None
    assert "too few validation orders" in choice.reason
    assert none_probabilities(_orders(seed=3, users=5, skip_share=0.0), choice.calibration) is None


def test_choice_repeats_and_calibration_round_trips_through_json() -> None:
    rows = _orders(seed=4, users=4_000, skip_share=0.3)
    first, second = choose_none_probability(rows, seed=5), choose_none_probability(rows, seed=5)
    assert first.as_dict() == second.as_dict()
    restored = NoneCalibration.from_dict(json.loads(json.dumps(first.calibration.as_dict())))
    assert restored.features == NONE_FEATURES
    per_row = none_probabilities(rows, restored)
    assert per_row.shape == (len(rows),)
    assert np.array_equal(per_row, none_probabilities(rows, first.calibration))
    assert ((per_row > 0) & (per_row < 1)).all()
    # constant within an order, as select_baskets requires
    assert pd.Series(per_row).groupby(rows["order_id"].to_numpy()).nunique().max() == 1
