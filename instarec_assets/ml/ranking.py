"""Ranking quality of top-k recommendation lists against users' held-out next orders.

Dagster-free so an asset, a benchmark or a notebook computes the same numbers. Shapes (pandas,
integer ids, one row per pair):

- `recommendations`: `user_id, product_id, rank` (rank 1 = first shown); a method's list per user;
- `actual`: `user_id, product_id`, the products of each evaluated user's held-out next order;
- `history`: `user_id, product_id, n_orders` (orders of the user's history containing it): an item
  in it is a *repeat*, any other recommended item is an *explore* item.

Every metric is a mean over the users in `actual` (a user with no list counts as all misses), so
methods are compared on the same users. Relevance is binary (bought in the next order or not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

KS = (3, 10)
MAP_K = 10


@dataclass(frozen=True)
class RankingMetrics:
    """One method's metrics; `at_k` maps k to precision, recall, ndcg and hit_rate."""

    method: str
    n_users: int
    at_k: dict[int, dict[str, float]]
    map_at_10: float
    coverage: float  # distinct products in the top-10 lists / catalogue size
    repeat_share: float  # share of top-10 recommended items the user bought before
    explore_share: float
    explore_hit_rate: float  # users with a top-10 explore item in the next order / users shown one

    def as_row(self) -> dict[str, float | int | str]:
        row: dict[str, float | int | str] = {"method": self.method, "users": self.n_users}
        for k, values in sorted(self.at_k.items()):
            row.update({f"{name}@{k}": value for name, value in values.items()})
        row.update(
            {
                f"map@{MAP_K}": self.map_at_10,
                "coverage": self.coverage,
                "repeat_share": self.repeat_share,
                "explore_share": self.explore_share,
                "explore_hit_rate": self.explore_hit_rate,
            }
        )
        return row

    def as_dict(self) -> dict:
        return asdict(self)


def _ranked_hits(recommendations: pd.DataFrame, actual: pd.DataFrame, max_k: int) -> pd.DataFrame:
    """The top `max_k` of each evaluated user's list, best first, with `hit` (in the next order)."""
    users = actual["user_id"].unique()
    top = recommendations.loc[recommendations["user_id"].isin(users)]
    top = top.sort_values(["user_id", "rank", "product_id"], kind="stable")
    top = top.assign(position=top.groupby("user_id").cumcount() + 1)
    top = top.loc[top["position"] <= max_k, ["user_id", "product_id", "position"]]
    return _flag(top, actual, "hit")


def _flag(frame: pd.DataFrame, pairs: pd.DataFrame, name: str) -> pd.DataFrame:
    """`frame` with a bool column `name`: whether its (user_id, product_id) is among `pairs`."""
    keys = pairs[["user_id", "product_id"]].drop_duplicates()
    merged = frame.merge(keys, on=["user_id", "product_id"], how="left", indicator=True)
    return merged.assign(**{name: merged.pop("_merge").eq("both").to_numpy()})


def ranking_metrics(
    method: str,
    recommendations: pd.DataFrame,
    actual: pd.DataFrame,
    history: pd.DataFrame,
    catalogue_size: int,
    ks: Sequence[int] = KS,
) -> RankingMetrics:
    """Precision, recall, NDCG and hit rate at each k, MAP@10, coverage and the repeat/explore split."""
    if catalogue_size <= 0:
        raise ValueError(f"catalogue_size must be positive, got {catalogue_size}")
    max_k = max(*ks, MAP_K)
    users = pd.Index(np.sort(actual["user_id"].unique()), name="user_id")
    n_relevant = actual.drop_duplicates(["user_id", "product_id"]).groupby("user_id").size().reindex(users)
    top = _ranked_hits(recommendations, actual, max_k)
    discount = 1.0 / np.log2(top["position"].to_numpy() + 1.0)
    at_k: dict[int, dict[str, float]] = {}
    for k in ks:
        within = top["position"].to_numpy() <= k
        hits = top.loc[within].groupby("user_id")["hit"].sum().reindex(users, fill_value=0)
        dcg = (
            pd.Series(
                discount[within] * top["hit"].to_numpy()[within], index=top["user_id"].to_numpy()[within]
            )
            .groupby(level=0)
            .sum()
            .reindex(users, fill_value=0.0)
        )
        ideal_cut = np.minimum(n_relevant.to_numpy(), k)
        ideal_table = np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))))
        at_k[k] = {
            "precision": float((hits / k).mean()),
            "recall": float((hits / n_relevant).mean()),
            "ndcg": float((dcg.to_numpy() / ideal_table[ideal_cut]).mean()),
            "hit_rate": float((hits > 0).mean()),
        }
    within = top.loc[top["position"] <= MAP_K].copy()
    within["hits_so_far"] = within.groupby("user_id")["hit"].cumsum()
    precision_at_hit = (within["hits_so_far"] / within["position"]).where(within["hit"], 0.0)
    average_precision = precision_at_hit.groupby(within["user_id"]).sum().reindex(
        users, fill_value=0.0
    ) / np.minimum(n_relevant, MAP_K)
    within = _flag(within, history, "repeat")
    explore = within.loc[~within["repeat"]]
    shown_explore = explore["user_id"].nunique()
    explore_hits = explore.loc[explore["hit"], "user_id"].nunique()
    return RankingMetrics(
        method=method,
        n_users=int(users.size),
        at_k=at_k,
        map_at_10=float(average_precision.mean()),
        coverage=float(within["product_id"].nunique() / catalogue_size),
        repeat_share=float(within["repeat"].mean()) if len(within) else float("nan"),
        explore_share=float((~within["repeat"]).mean()) if len(within) else float("nan"),
        explore_hit_rate=float(explore_hits / shown_explore) if shown_explore else float("nan"),
    )


def popularity_baseline(history: pd.DataFrame, users: Sequence[int], k: int = MAP_K) -> pd.DataFrame:
    """Everyone gets the `k` products bought by the most users (ties: smaller product id first)."""
    popular = (
        history.groupby("product_id")["user_id"]
        .nunique()
        .reset_index(name="buyers")
        .sort_values(["buyers", "product_id"], ascending=[False, True])
        .head(k)["product_id"]
        .to_numpy()
    )
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(users), popular.size),
            "product_id": np.tile(popular, len(users)),
            "rank": np.tile(np.arange(1, popular.size + 1), len(users)),
        }
    )


def personal_frequency_baseline(history: pd.DataFrame, k: int = MAP_K) -> pd.DataFrame:
    """Each user's `k` most often bought products (ties: smaller product id first)."""
    ranked = history.sort_values(["user_id", "n_orders", "product_id"], ascending=[True, False, True])
    ranked = ranked.assign(rank=ranked.groupby("user_id").cumcount() + 1)
    return ranked.loc[ranked["rank"] <= k, ["user_id", "product_id", "rank"]].reset_index(drop=True)


def last_order_baseline(last_order: pd.DataFrame, history: pd.DataFrame, k: int = MAP_K) -> pd.DataFrame:
    """The user's last order (`user_id, product_id`), most often bought first, cut to `k`."""
    frame = last_order[["user_id", "product_id"]].merge(
        history[["user_id", "product_id", "n_orders"]], on=["user_id", "product_id"], how="left"
    )
    return personal_frequency_baseline(frame.fillna({"n_orders": 0}), k)


def ranking_table(results: Sequence[RankingMetrics]) -> pd.DataFrame:
    return pd.DataFrame([result.as_row() for result in results])


def compare_reports(
    current: pd.DataFrame, previous: Mapping[str, Mapping[str, float]] | None
) -> pd.DataFrame:
    """`current` with a `ndcg@10 change` column against a previous report's rows keyed by method."""
    if not previous:
        return current
    before = current["method"].map(lambda method: previous.get(method, {}).get("ndcg@10", np.nan))
    return current.assign(**{"ndcg@10 change": current["ndcg@10"] - before})


def candidate_ranking_report(
    candidates: pd.DataFrame, training_history: pd.DataFrame, catalogue_size: int
) -> pd.DataFrame:
    """The model's ranking of held-out users' candidates against the three baselines, one row each.

    `candidates`: `user_id, product_id, label, probability, n_orders, in_last_order` for the
    held-out users (label 1 = in their next order); `training_history`: `user_id, product_id,
    n_orders` of the training users (popularity is learnt there, not on the users scored). The next
    order here is its reordered products (the candidates are the user's earlier products), so every
    method ranks repeats only; explore items are measured where the served lists include them."""
    actual = candidates.loc[candidates["label"] == 1, ["user_id", "product_id"]]
    history = candidates[["user_id", "product_id", "n_orders"]]
    model = candidates.sort_values(["user_id", "probability", "product_id"], ascending=[True, False, True])
    model = model.assign(rank=model.groupby("user_id").cumcount() + 1)
    users = np.sort(candidates["user_id"].unique())
    methods = {
        "model: reorder probability": model[["user_id", "product_id", "rank"]],
        "baseline: personal top-frequency": personal_frequency_baseline(history),
        "baseline: last order": last_order_baseline(
            candidates.loc[candidates["in_last_order"], ["user_id", "product_id"]], history
        ),
        "baseline: global popularity": popularity_baseline(training_history, users),
    }
    return ranking_table(
        [ranking_metrics(name, ranked, actual, history, catalogue_size) for name, ranked in methods.items()]
    )
