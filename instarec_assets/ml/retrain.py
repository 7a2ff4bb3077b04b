"""When to retrain a model, Dagster-free: a policy, the drift measures it reads, and the decision.

A model step of batch D either fits a new model or keeps the active one (the latest earlier
batch's model) and re-scores with it. `decide` retrains when there is no earlier model, or when
any enabled rule of the `RetrainPolicy` fires: N batches since the model was fitted, its age in
days (between the batch dates) or a drift measure past a threshold. A rule set to 0 is off.

Drift, per model:
- XGBoost: the population stability index (PSI) of each feature between the rows the model was
  fitted on and the current training rows. At training time the card stores a compact reference
  profile per feature (`feature_profile`: quantile bin edges of the training rows and the share of
  rows in each bin, NaN its own bin); `population_stability` scores the current rows against it.
  The drift is the largest PSI over the features (0.1 is a moderate, 0.2 a significant shift).
- GraphSAGE: the share of the current target graph's edges (distinct user-product pairs of the
  order history) that were not in the graph the model was trained on, from the edge counts the
  model config records (`graph_drift`). The history only grows, so the count difference is exactly
  the new edges.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PROFILE_BINS = 10
# Rows the quantile edges are taken from (evenly spaced, so deterministic); the shares use every row.
PROFILE_SAMPLE_ROWS = 1_000_000
# A share of 0 would make PSI infinite: shares are floored at this before the log ratio.
PSI_EPSILON = 1e-4
TOP_DRIFTING = 5


@dataclass(frozen=True)
class RetrainPolicy:
    """When a model is refitted; 0 turns a rule off (all three 0: only the first model is fitted)."""

    every_batches: int = 4
    max_age_days: int = 28
    drift_threshold: float = 0.2

    def __post_init__(self) -> None:
        if self.every_batches < 0 or self.max_age_days < 0 or self.drift_threshold < 0:
            raise ValueError(f"retrain policy values must be >= 0 (0 turns a rule off): {self}")

    def describe(self) -> str:
        rules = [
            f"every {self.every_batches} batches" if self.every_batches else "",
            f"after {self.max_age_days} days" if self.max_age_days else "",
            f"drift >= {self.drift_threshold:g}" if self.drift_threshold else "",
        ]
        return ", ".join(rule for rule in rules if rule) or "never after the first model"


@dataclass(frozen=True)
class RetrainDecision:
    """Whether batch `batch` refits, why, and the numbers the rules looked at."""

    retrain: bool
    reason: str
    batches_since: int
    age_days: int
    drift: float
    drift_detail: dict[str, Any] = field(default_factory=dict)
    trained_on_batch: str | None = None
    batch: str = ""
    policy: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (a NaN drift becomes None)."""
        out = asdict(self)
        out["drift"] = None if not math.isfinite(self.drift) else self.drift
        return out


def _days_between(earlier: str, later: str) -> int:
    return (dt.date.fromisoformat(later) - dt.date.fromisoformat(earlier)).days


def decide(
    policy: RetrainPolicy,
    trained_on_batch: str | None,
    batch: str,
    batches_since: int,
    drift: float,
    drift_detail: Mapping[str, Any] | None = None,
    force: bool = False,
    unusable: str = "",
) -> RetrainDecision:
    """Retrain or keep the model fitted on `trained_on_batch` for `batch`.

    `batches_since`: landing batches after the fitting batch up to and including `batch`; `drift`:
    the model's drift measure (NaN when it cannot be measured: the drift rule does not fire).
    `force` (run config) and `unusable` (why the earlier model cannot be kept) always retrain.
    The reason names the rule that fired, or, when keeping, each rule's value against its limit."""
    detail = dict(drift_detail or {})
    age = _days_between(trained_on_batch, batch) if trained_on_batch else 0

    def decision(retrain: bool, reason: str) -> RetrainDecision:
        return RetrainDecision(
            retrain=retrain,
            reason=reason,
            batches_since=batches_since if trained_on_batch else 0,
            age_days=age,
            drift=float(drift),
            drift_detail=detail,
            trained_on_batch=batch if retrain else trained_on_batch,
            batch=batch,
            policy=policy.describe(),
        )

    if trained_on_batch is None:
        return decision(True, "first model: no earlier batch has one")
    if force:
        return decision(True, "forced by the run config (force_retrain)")
    if unusable:
        return decision(True, f"the model of {trained_on_batch} cannot be kept: {unusable}")
    if policy.every_batches and batches_since >= policy.every_batches:
        return decision(
            True,
            f"batches: {batches_since} batches since the model was fitted on {trained_on_batch} "
            f"(retrain every {policy.every_batches})",
        )
    if policy.max_age_days and age >= policy.max_age_days:
        return decision(
            True,
            f"age: the model was fitted on {trained_on_batch}, {age} days ago "
            f"(retrain after {policy.max_age_days})",
        )
    if policy.drift_threshold and math.isfinite(drift) and drift >= policy.drift_threshold:
        worst = detail.get("worst")
        where = f" ({worst})" if worst else ""
        return decision(True, f"drift: {drift:.4f}{where} >= threshold {policy.drift_threshold:g}")
    checks = [
        f"{batches_since}/{policy.every_batches} batches" if policy.every_batches else "",
        f"{age}/{policy.max_age_days} days" if policy.max_age_days else "",
        (f"drift {drift:.4f} < {policy.drift_threshold:g}" if math.isfinite(drift) else "drift not measured")
        if policy.drift_threshold
        else "",
    ]
    limits = ", ".join(check for check in checks if check) or "no rule enabled"
    return decision(False, f"kept the model fitted on {trained_on_batch}: {limits}")


# --- XGBoost: population stability index per feature ----------------------------------------------


def _column_profile(values: np.ndarray, bins: int) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    present = values[~missing]
    if present.size:
        sample = present
        if present.size > PROFILE_SAMPLE_ROWS:
            sample = present[np.linspace(0, present.size - 1, PROFILE_SAMPLE_ROWS).astype(np.int64)]
        inner = np.quantile(sample, np.linspace(0, 1, bins + 1)[1:-1], method="nearest")
        edges = np.unique(inner[np.isfinite(inner)])
    else:
        edges = np.empty(0)
    shares = _bin_shares(values, edges)
    return {"edges": [float(edge) for edge in edges], "shares": shares}


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> list[float]:
    """Share of rows per bin: (-inf, e1), [e1, e2), ..., [ek, inf), then NaN."""
    values = np.asarray(values, dtype=np.float64)
    total = max(values.size, 1)
    missing = int(np.isnan(values).sum())
    # rows below each edge (NaN compares false), differenced: one comparison pass per edge, 2.5x
    # faster than a searchsorted of every row (12M rows x 28 features per full-size fit)
    below = [np.count_nonzero(values < edge) for edge in np.asarray(edges, dtype=np.float64)]
    cumulative = np.array([0, *below, values.size - missing], dtype=np.int64)
    return [float(count) / total for count in np.diff(cumulative)] + [float(missing) / total]


def feature_profile(
    features: np.ndarray, feature_names: Sequence[str], bins: int = PROFILE_BINS
) -> dict[str, Any]:
    """The reference a later batch's rows are compared with: per feature, the inner quantile edges
    of these rows (duplicates merged, so a binary feature has one edge) and the share of rows in
    each bin, the last share being NaN's. Small: about 20 numbers per feature."""
    return {
        "method": f"quantile bins ({bins}), NaN its own bin",
        "rows": int(features.shape[0]),
        "features": {
            name: _column_profile(features[:, position], bins) for position, name in enumerate(feature_names)
        },
    }


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """sum((a - e) * ln(a / e)) over the bins, each share floored at `epsilon`."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability(
    features: np.ndarray,
    feature_names: Sequence[str],
    profile: Mapping[str, Any],
    top: int = TOP_DRIFTING,
) -> tuple[float, dict[str, Any]]:
    """(largest PSI over the features, detail) of the current rows against a `feature_profile`.

    The detail holds the `top` drifting features with their PSI, the worst one, and the features
    the profile lacks (new features: the model cannot use them, so the caller retrains)."""
    reference = profile.get("features", {})
    scores: dict[str, float] = {}
    for position, name in enumerate(feature_names):
        if name not in reference:
            continue
        edges = np.asarray(reference[name]["edges"], dtype=np.float64)
        scores[name] = psi(reference[name]["shares"], _bin_shares(features[:, position], edges))
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    drift = ranked[0][1] if ranked else float("nan")
    return drift, {
        "metric": "psi",
        "reference_rows": profile.get("rows"),
        "current_rows": int(features.shape[0]),
        "worst": ranked[0][0] if ranked else None,
        "top": [{"feature": name, "psi": round(value, 6)} for name, value in ranked[:top]],
        "not_in_reference": [name for name in feature_names if name not in reference],
    }


# --- GraphSAGE: the share of edges the model never saw --------------------------------------------


def graph_drift(trained: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
    """(share of the current graph's edges not in the training graph, detail) from the graphs'
    counts (`BipartiteGraph.describe()`: users, products, edges)."""
    now = int(current.get("edges", 0))
    then = int(trained.get("edges", 0))
    share = max(now - then, 0) / now if now else 0.0
    return share, {
        "metric": "new_edge_share",
        "worst": "new user-product edges",
        **{
            f"{name}_{when}": int(counts.get(name, 0))
            for name in ("users", "products", "edges")
            for when, counts in (("trained", trained), ("now", current))
        },
    }
