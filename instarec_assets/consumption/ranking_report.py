"""The ranking report: every ranking the system can serve, replayed on held-out users' next orders.

The served lists are for a next order nobody has seen yet, so they cannot be scored directly. The
report replays them where the answer is known: the validation users the model card holds out
(drawn exactly as training drew them), their history before their target order (the `target`
framing of the features and embeddings), and the whole target order as the truth (every product
in it, new ones included, so repeat and explore items are both measured). Each method ranks the same
users:

- the served ranking: `top_recommendations` itself (the query that builds the recommendations table)
  on the held-out users' XGBoost probabilities plus their explore items, cut to the first 10;
- XGBoost alone: the user's candidates by reorder probability;
- GraphSAGE alone: the current products with the highest link score (the dot product of the user's
  and the product's embeddings, the logit the model was trained on), bought or not;
- the baselines of instarec_assets.ml.ranking: personal top-frequency, last order, and global
  popularity learnt on the training users.

The explore items are also judged alone (`explore`): hit rate@2 and diversity of the served explore
items (co-purchase neighbours, similarity recomputed without any target order), of GraphSAGE's
nearest products, and of a baseline giving each user the most popular products they never bought.

Dagster-free; the asset (assets/consumption.py) attaches the table, the plot and the comparison with
the previous report, and blocks on `beats_top_frequency`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from instarec_assets.consumption.recommendations import (
    PREDICTIONS_SCHEMA,
    TOP_K,
    ExploreInputs,
    personal_explore_items,
    top_recommendations,
)
from instarec_assets.consumption.similar_counts import current_baskets, without_orders
from instarec_assets.consumption.similar_items import MIN_SUPPORT, similar_items_from_counts
from instarec_assets.consumption.similar_items import similar_items as similar_items_table
from instarec_assets.lake.duck import StagedParquet, copy_to_parquet
from instarec_assets.lake.feature_delta import feature_source, with_feature_tables
from instarec_assets.ml.graphsage import SIMILARITY_FEATURE, SimilarityLookup
from instarec_assets.ml.graphsage.explore import EMBEDDINGS_SQL, EXPLORE_K, explore_from_lake
from instarec_assets.ml.ranking import (
    MAP_K,
    PairedDifference,
    RankingMetrics,
    explore_metrics,
    last_order_baseline,
    ndcg_by_user,
    paired_difference,
    personal_frequency_baseline,
    popular_explore_baseline,
    popularity_baseline,
    ranking_metrics,
    ranking_table,
)
from instarec_assets.ml.reorder_model import (
    EVALUATION_SAMPLE,
    HISTORY_COUNT_COLUMN,
    LAST_ORDER_COLUMN,
    MODEL_FILE,
    load_feature_rows,
    read_model_card,
)
from instarec_assets.ml.training import load_model, predict, sample_users, split_users

SERVED = "served: top 10 incl. explore"
XGBOOST = "xgboost: reorder probability"
GRAPHSAGE = "graphsage: link score"
TOP_FREQUENCY = "baseline: personal top-frequency"
LAST_ORDER = "baseline: last order"
POPULARITY = "baseline: global popularity"
METHODS = (SERVED, XGBOOST, GRAPHSAGE, TOP_FREQUENCY, LAST_ORDER, POPULARITY)
# The metrics compared with the previous report and drawn in the plot.
HEADLINE_METRICS = ("ndcg@10", "recall@10", "precision@10", "hit_rate@3", "map@10", "explore_hit_rate")
CHECK_METRIC = "ndcg@10"
EXPLORE_PERSONAL = "explore: co-purchase neighbours (served)"
EXPLORE_NEAREST = "explore: graphsage nearest products"
EXPLORE_POPULAR = "explore baseline: most popular never bought"
EXPLORE_METHODS = (EXPLORE_PERSONAL, EXPLORE_NEAREST, EXPLORE_POPULAR)

# The report reads each user's last order only (eval_set `train`): `train_earlier` rows are extra
# training targets of an earlier order (features/targets.py), never evaluated.
HELD_OUT_SQL = """
SELECT * FROM read_parquet($training_set, hive_partitioning = false)
WHERE eval_set = 'train' AND user_id IN (SELECT unnest($users))
"""
TRAINING_HISTORY_SQL = f"""
SELECT DISTINCT user_id, product_id, "{HISTORY_COUNT_COLUMN}" AS n_orders
FROM read_parquet($training_set, hive_partitioning = false)
WHERE eval_set = 'train' AND user_id NOT IN (SELECT unnest($users))
"""
# Every product of each held-out user's target order (the truth), from the clean order lines.
NEXT_ORDER_SQL = """
SELECT DISTINCT targets.user_id, lines.product_id
FROM (SELECT unnest($user_ids) AS user_id, unnest($order_ids) AS order_id) AS targets
JOIN read_parquet($lines, hive_partitioning = false) AS lines USING (order_id)
ORDER BY 1, 2
"""
# The order lines of every order but the users' target orders: the history the `target` framing sees.
HISTORY_LINES_SQL = """
SELECT * FROM read_parquet($lines, hive_partitioning = false)
WHERE order_id NOT IN (
    SELECT DISTINCT order_id FROM read_parquet($training_set, hive_partitioning = false) WHERE eval_set = 'train'
)
"""
CATALOG_SQL = """
SELECT DISTINCT product_id FROM read_parquet($products, hive_partitioning = false)
WHERE is_current ORDER BY product_id
"""


@dataclass(frozen=True)
class ReportInputs:
    """URIs of everything the report reads (the asset's declared inputs)."""

    training_set: str
    xgboost_model: str  # local folder with model.json and model_card.json
    user_embeddings: str
    product_embeddings: str
    user_features: str
    product_features: str
    user_product_features: str
    clean_products: str
    clean_aisles: str
    clean_departments: str
    clean_order_products: Sequence[str]  # every batch up to this one (the target orders' lines)
    # similar_items' co-purchase counts of this batch: the explore similarity is these minus the target
    # orders' baskets (no basket self-join); None recounts the history without the target orders
    similar_item_counts: str | None = None


@dataclass(frozen=True)
class RankingReport:
    """One row per method (`ranking_table` columns) on `n_users` held-out users."""

    table: pd.DataFrame
    explore: pd.DataFrame  # one row per explore method: explore hit rate@2 and diversity
    model_version: str
    n_users: int
    catalogue_size: int
    users: str  # which held-out users, in words (all, or a kept model's seeded sample)
    # per-user NDCG@10 of the served ranking minus personal top-frequency's, with its standard error
    served_vs_top_frequency: PairedDifference

    def rows_by_method(self) -> dict[str, dict[str, float]]:
        """Both tables keyed by method, JSON-ready: what the next report compares itself with."""
        rows = [*self.table.to_dict(orient="records"), *self.explore.to_dict(orient="records")]
        return {
            str(row["method"]): {key: _json_number(value) for key, value in row.items() if key != "method"}
            for row in rows
        }


def _json_number(value) -> float | int | None:
    if isinstance(value, int | np.integer):
        return int(value)
    value = float(value)
    return None if np.isnan(value) else value


def validation_users(user_ids: np.ndarray, card: Mapping) -> np.ndarray:
    """The users the model card held out: `split_users` over the distinct users gives the same draw
    as over the rows, since it draws from the sorted distinct users. A kept model's card holds an
    `evaluation_sample` (it was evaluated on a seeded sample of them): the same sample is drawn here,
    so the report costs in proportion to the sample and judges the users the model card judged."""
    split = card.get("data_split", {})
    users = np.unique(np.asarray(user_ids))
    seed = int(split.get("seed", 0))
    _, held_out = split_users(users, float(split.get("validation_fraction", 0.1)), seed)
    held_out_users = users[held_out]
    sample = card.get(EVALUATION_SAMPLE)
    if sample:
        return sample_users(held_out_users, int(sample["max_users"]), int(sample.get("seed", seed)))
    return held_out_users


def evaluation_users_text(card: Mapping, n_users: int) -> str:
    """The report's users in words (the asset's metadata)."""
    sample = card.get(EVALUATION_SAMPLE)
    if sample:
        return f"{sample['description']}: the model was kept, the report replays the same sample"
    return f"all {n_users:,} validation users of the batch (the model was fitted on this batch)"


def _ranked(frame: pd.DataFrame, score: str) -> pd.DataFrame:
    ranked = frame.sort_values(["user_id", score, "product_id"], ascending=[True, False, True])
    ranked = ranked.assign(rank=ranked.groupby("user_id").cumcount() + 1)
    return ranked.loc[ranked["rank"] <= MAP_K, ["user_id", "product_id", "rank"]].reset_index(drop=True)


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's `k` column indices by descending score, ties to the smaller index: the columns
    scoring at least the row's k-th largest score (np.partition), then only those sorted (a full
    sort of every row's 50,000 products took 77 of the report's 120 s at full size)."""
    if k == 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    if np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)
    threshold = np.partition(scores, -k, axis=1)[:, -k]
    rows, columns = np.nonzero(scores >= threshold[:, None])
    order = np.lexsort((columns, -scores[rows, columns], rows))
    rows, columns = rows[order], columns[order]
    position = np.arange(rows.size) - np.searchsorted(rows, rows)
    return columns[position < k].reshape(scores.shape[0], k)


def graphsage_ranking(
    user_ids: np.ndarray,
    user_vectors: np.ndarray,
    product_ids: np.ndarray,
    product_vectors: np.ndarray,
    k: int = MAP_K,
    chunk_users: int = 1024,
) -> pd.DataFrame:
    """Each user's `k` products with the highest GraphSAGE link score (the decoder's logit, the dot
    product of the raw embeddings: what the model was trained to rank), bought before or not; ties go
    to the smaller product id."""
    k = min(k, product_ids.size)
    order = np.argsort(product_ids, kind="stable")
    product_ids, product_vectors = product_ids[order], product_vectors[order]
    frames = []
    for first in range(0, user_ids.size, chunk_users):
        scores = user_vectors[first : first + chunk_users] @ product_vectors.T
        best = _top_columns(scores, k)
        frames.append(
            pd.DataFrame(
                {
                    "user_id": np.repeat(user_ids[first : first + chunk_users], k),
                    "product_id": product_ids[best].reshape(-1),
                    "rank": np.tile(np.arange(1, k + 1), best.shape[0]),
                }
            )
        )
    if not frames:
        return pd.DataFrame({"user_id": [], "product_id": [], "rank": []}, dtype=np.int64)
    return pd.concat(frames, ignore_index=True)


def _raw_embeddings(
    conn: duckdb.DuckDBPyConnection, uri: str, id_column: str, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the `target` framing's embeddings for the ids in `keep`, not normalised."""
    rows = conn.sql(
        EMBEDDINGS_SQL.format(id_column=id_column), params={"uri": uri, "framing": "target"}
    ).to_arrow_table()
    ids = rows.column("id").to_numpy(zero_copy_only=False).astype(np.int64)
    column = rows.column("embedding").combine_chunks()
    selected = np.isin(ids, keep)
    if len(column) == 0 or not selected.any():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), -1)
    return ids[selected], vectors[selected]


def build_ranking_report(
    conn: duckdb.DuckDBPyConnection, inputs: ReportInputs, scratch: Path, threads: int = 0
) -> RankingReport:
    """Every method's ranking metrics on the held-out users' next orders (see the module docstring)."""
    scratch.mkdir(parents=True, exist_ok=True)
    card = read_model_card(inputs.xgboost_model)
    features = tuple(card["features"])
    all_users = (
        conn.sql(
            f"SELECT DISTINCT user_id FROM {feature_source(conn, inputs.training_set)} "
            "WHERE eval_set = 'train' ORDER BY 1"
        )
        .to_arrow_table()
        .column("user_id")
        .to_numpy(zero_copy_only=False)
    )
    held_out = validation_users(all_users, card).astype(np.int64)
    user_list = held_out.tolist()
    sql, params = with_feature_tables(
        conn, HELD_OUT_SQL, {"training_set": inputs.training_set, "users": user_list}, "training_set"
    )
    held_out_rows = copy_to_parquet(conn, sql, scratch / "held_out_rows.parquet", params=params).path
    computed = {}
    if SIMILARITY_FEATURE in features:
        similarity = SimilarityLookup.from_lake(conn, inputs.user_embeddings, inputs.product_embeddings)
        computed[SIMILARITY_FEATURE] = similarity.for_rows
    data = load_feature_rows(conn, str(held_out_rows), features, with_labels=True, computed=computed)
    booster = load_model(Path(inputs.xgboost_model) / MODEL_FILE, threads=threads)
    probabilities = predict(booster, data.features, threads=threads)
    names = list(features)
    candidates = pd.DataFrame(
        {
            "user_id": data.user_ids.astype(np.int64),
            "product_id": data.product_ids.astype(np.int64),
            "order_id": data.order_ids.astype(np.int64),
            "probability": probabilities.astype(np.float32),
            "n_orders": data.features[:, names.index(HISTORY_COUNT_COLUMN)],
            "in_last_order": data.features[:, names.index(LAST_ORDER_COLUMN)] > 0,
        }
    ).drop_duplicates(["user_id", "product_id"])
    history = candidates[["user_id", "product_id", "n_orders"]]
    targets = candidates.drop_duplicates("user_id")[["user_id", "order_id"]]
    actual = conn.execute(
        NEXT_ORDER_SQL,
        {
            "user_ids": targets["user_id"].tolist(),
            "order_ids": targets["order_id"].tolist(),
            "lines": list(inputs.clean_order_products),
        },
    ).df()
    catalog = conn.execute(CATALOG_SQL, {"products": inputs.clean_products}).df()["product_id"].to_numpy()

    explore, nearest = held_out_explore(conn, inputs, held_out, scratch)
    served = served_ranking(conn, inputs, candidates, explore, card["model_version"], scratch)
    user_ids, user_vectors = _raw_embeddings(conn, inputs.user_embeddings, "user_id", held_out)
    product_ids, product_vectors = _raw_embeddings(conn, inputs.product_embeddings, "product_id", catalog)
    training_history = conn.execute(
        *with_feature_tables(
            conn,
            TRAINING_HISTORY_SQL,
            {"training_set": inputs.training_set, "users": user_list},
            "training_set",
        )
    ).df()
    methods = {
        SERVED: served,
        XGBOOST: _ranked(candidates, "probability"),
        GRAPHSAGE: graphsage_ranking(user_ids, user_vectors, product_ids, product_vectors),
        TOP_FREQUENCY: personal_frequency_baseline(history),
        LAST_ORDER: last_order_baseline(
            candidates.loc[candidates["in_last_order"], ["user_id", "product_id"]], history
        ),
        POPULARITY: popularity_baseline(training_history, held_out),
    }
    catalogue_size = max(int(catalog.size), 1)
    results: list[RankingMetrics] = [
        ranking_metrics(name, ranked, actual, history, catalogue_size) for name, ranked in methods.items()
    ]
    current = pd.Index(catalog)
    explore_lists = {
        EXPLORE_PERSONAL: _explore_list(conn, explore),
        EXPLORE_NEAREST: _explore_list(conn, nearest),
        EXPLORE_POPULAR: popular_explore_baseline(
            training_history.loc[training_history["product_id"].isin(current)], history, held_out, EXPLORE_K
        ),
    }
    explore_table = pd.DataFrame(
        [
            explore_metrics(name, lists, actual, EXPLORE_K).as_row(EXPLORE_K)
            for name, lists in explore_lists.items()
        ]
    )
    return RankingReport(
        explore=explore_table,
        table=ranking_table(results),
        model_version=str(card["model_version"]),
        n_users=int(actual["user_id"].nunique()),
        catalogue_size=catalogue_size,
        users=evaluation_users_text(card, int(held_out.size)),
        served_vs_top_frequency=paired_difference(
            ndcg_by_user(methods[SERVED], actual), ndcg_by_user(methods[TOP_FREQUENCY], actual)
        ),
    )


def held_out_explore(
    conn: duckdb.DuckDBPyConnection, inputs: ReportInputs, users: np.ndarray, scratch: Path
) -> tuple[StagedParquet, StagedParquet]:
    """(served explore items, GraphSAGE nearest products) of the held-out users, chosen as the
    recommendations asset chooses them but in the `target` framing: the co-purchase similarity is
    recomputed from the order lines without any target order (no next order leaks into it)."""
    similar = target_similar_items(conn, inputs, scratch)
    nearest = explore_from_lake(
        conn,
        inputs.user_embeddings,
        inputs.product_embeddings,
        inputs.user_product_features,
        scratch / "held_out_nearest.parquet",
        framing="target",
        user_ids=users,
    )
    explore = personal_explore_items(
        conn,
        str(similar.path),
        inputs.user_product_features,
        inputs.clean_products,
        str(nearest.path),
        scratch / "held_out_explore.parquet",
        k=EXPLORE_K,
        framing="target",
        user_ids=users.tolist(),
    )
    return explore, nearest


# The target orders: every order of the training set (one per training user, the order its labels
# come from), which the `target` framing's history leaves out.
TARGET_ORDERS_SQL = "SELECT DISTINCT order_id FROM read_parquet($training_set, hive_partitioning = false) WHERE eval_set = 'train'"
# A view cannot be prepared: the lines and the (resolved) training set come in as views and literals.
HISTORY_VIEW_SQL = """
CREATE OR REPLACE TEMP VIEW report_history_lines AS
SELECT * FROM report_all_lines
WHERE order_id NOT IN (SELECT DISTINCT order_id FROM {training_set} WHERE eval_set = 'train')
"""


def target_similar_items(
    conn: duckdb.DuckDBPyConnection, inputs: ReportInputs, scratch: Path
) -> StagedParquet:
    """The co-purchase lists of the history without any target order. From stored counts: the batch's
    counts minus the target orders' own pairs and baskets (counts add over baskets), the same rows as
    recounting the rest of the history (tested); without counts, the recount."""
    lines = {"lines": list(inputs.clean_order_products), "training_set": inputs.training_set}
    if inputs.similar_item_counts is None:
        sql, params = with_feature_tables(conn, HISTORY_LINES_SQL, lines, "training_set")
        history_lines = copy_to_parquet(conn, sql, scratch / "history_lines.parquet", params=params)
        return similar_items_table(
            conn,
            [str(history_lines.path)],
            inputs.clean_products,
            inputs.clean_aisles,
            inputs.clean_departments,
            scratch / "history_similar_items.parquet",
        )
    target_orders, params = with_feature_tables(
        conn, TARGET_ORDERS_SQL, {"training_set": inputs.training_set}, "training_set"
    )
    counts = without_orders(
        conn,
        inputs.similar_item_counts,
        list(inputs.clean_order_products),
        target_orders,
        params,
        scratch / "history_counts.parquet",
        MIN_SUPPORT,
    )
    conn.read_parquet(list(inputs.clean_order_products), hive_partitioning=False).create_view(
        "report_all_lines", replace=True
    )
    conn.execute(HISTORY_VIEW_SQL.format(training_set=feature_source(conn, inputs.training_set)))
    baskets = current_baskets(conn, "report_history_lines", inputs.clean_products)
    return similar_items_from_counts(
        conn,
        str(counts.path),
        baskets,
        inputs.clean_products,
        inputs.clean_aisles,
        inputs.clean_departments,
        scratch / "history_similar_items.parquet",
    )


def _explore_list(conn: duckdb.DuckDBPyConnection, staged: StagedParquet) -> pd.DataFrame:
    return conn.execute(
        "SELECT user_id, product_id, explore_rank::INTEGER AS rank "
        "FROM read_parquet(?, hive_partitioning = false) ORDER BY user_id, rank",
        [str(staged.path)],
    ).df()


def served_ranking(
    conn: duckdb.DuckDBPyConnection,
    inputs: ReportInputs,
    candidates: pd.DataFrame,
    explore: StagedParquet,
    model_version: str,
    scratch: Path,
) -> pd.DataFrame:
    """The recommendations query on the held-out users: their candidates' probabilities as `train`
    rows and their explore items (held_out_explore); ranks as served (explore after the reorders),
    cut to the first TOP_K."""
    predictions = scratch / "held_out_predictions.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(candidates["user_id"], pa.int32()),
                "product_id": pa.array(candidates["product_id"], pa.int32()),
                "order_id": pa.array(candidates["order_id"], pa.int32()),
                "eval_set": pa.array(["train"] * len(candidates), pa.string()),
                "probability": pa.array(candidates["probability"], pa.float32()),
            },
            schema=PREDICTIONS_SCHEMA,
        ),
        predictions,
    )
    served = top_recommendations(
        conn,
        str(predictions),
        inputs.clean_products,
        inputs.clean_aisles,
        inputs.clean_departments,
        model_version,
        scratch / "held_out_served.parquet",
        explore=ExploreInputs(str(explore.path), inputs.user_features, inputs.product_features, "target"),
        eval_set="train",
    )
    frame = conn.execute(
        "SELECT user_id, product_id, rank::INTEGER AS rank FROM read_parquet(?, hive_partitioning = false) "
        "ORDER BY user_id, rank",
        [str(served.path)],
    ).df()
    return frame.loc[frame["rank"] <= TOP_K].reset_index(drop=True)


# A served ranking this many standard errors (of the per-user paired difference) below personal
# top-frequency is worse beyond noise: the check blocks. Closer than that it only warns.
NOISE_STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class RankingVerdict:
    """The check's verdict: `passed` when served beats top-frequency; a failure `blocks` only when
    served is worse beyond noise (or no paired difference is known to say otherwise)."""

    passed: bool
    blocks: bool
    line: str


def beats_top_frequency(table: pd.DataFrame, difference: PairedDifference | None = None) -> RankingVerdict:
    """Whether the served ranking's NDCG@10 is above personal top-frequency's, with the paired
    difference's standard error, so a verdict within noise reads (and is treated) as one."""
    by_method = table.set_index("method")[CHECK_METRIC]
    served, baseline = float(by_method[SERVED]), float(by_method[TOP_FREQUENCY])
    passed = served > baseline
    spread = (
        f" +/- {difference.standard_error:.4f} (standard error over {difference.n_users} users)"
        if difference is not None
        else ""
    )
    line = (
        f"served ranking NDCG@10 {served:.4f} {'beats' if passed else 'does not beat'} personal "
        f"top-frequency {baseline:.4f} (difference {served - baseline:+.4f}{spread})"
    )
    if passed:
        return RankingVerdict(True, False, line)
    if difference is not None and difference.mean >= -NOISE_STANDARD_ERRORS * difference.standard_error:
        return RankingVerdict(
            False, False, f"{line}: within {NOISE_STANDARD_ERRORS:g} standard errors, a warning, not a block"
        )
    beyond = f": more than {NOISE_STANDARD_ERRORS:g} standard errors worse" if difference is not None else ""
    return RankingVerdict(False, True, line + beyond)


def compare_with_previous(
    table: pd.DataFrame, previous: Mapping[str, Mapping[str, float | None]] | None
) -> pd.DataFrame:
    """The headline metrics per method with their change since the previous report (NaN where that
    report had no such method or metric)."""
    columns = [name for name in HEADLINE_METRICS if name in table.columns]
    out = table[["method", *columns]].copy()
    for name in columns:
        before = out["method"].map(lambda method, name=name: (previous or {}).get(method, {}).get(name))
        out[f"{name} change"] = out[name] - pd.to_numeric(before, errors="coerce")
    ordered = ["method"] + [c for name in columns for c in (name, f"{name} change")]
    return out[ordered]


def plot_report(table: pd.DataFrame, folder: Path) -> Path:
    """Grouped bars of the headline metrics, one group per metric, one bar per method."""
    columns = [name for name in HEADLINE_METRICS if name in table.columns]
    figure = Figure(figsize=(9, 4.5))
    axes = figure.add_subplot()
    width = 0.8 / max(len(table), 1)
    positions = np.arange(len(columns))
    for offset, row in enumerate(table.to_dict(orient="records")):
        values = [0.0 if pd.isna(row[name]) else float(row[name]) for name in columns]
        axes.bar(positions + offset * width, values, width, label=row["method"])
    axes.set_xticks(positions + width * (len(table) - 1) / 2, columns)
    axes.set(ylabel="score (held-out users' next orders)", ylim=(0, 1), title="Ranking report")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=7)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ranking_report.png"
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path
