"""Scored candidates become ranked recommendations with the product's current name, aisle and department."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from instarec_assets.lake.duck import StagedParquet, copy_to_parquet, user_id_table
from instarec_assets.lake.feature_delta import feature_source, with_feature_tables
from instarec_assets.ml.graphsage.explore import EXPLORE_SCHEMA, explore_from_lake
from instarec_assets.ml.reorder_model import RowFeature

TOP_K = 10  # the head of a user's list: what an unfiltered answer shows first
CANDIDATES = 50  # reorder candidates stored per user, so that a filtered answer still fills k
SCORING_BATCH_ROWS = 1_000_000
# Users per personal-explore query: all 206,209 users of the full-size data in one query ran out of
# DuckDB's default 4 GB (the join to similar_items fans each user x product out ~17-fold).
EXPLORE_BATCH_USERS = 25_000

PREDICTIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int32()),
        ("product_id", pa.int32()),
        ("order_id", pa.int32()),
        ("eval_set", pa.string()),
        ("probability", pa.float32()),
    ]
)

# Serving rows by default: the next order after the latest one we know, for every user (the ranking
# report runs the same query on held-out users' `train` rows, framing `target`). Each user's list is
# their top `top_k` reorder candidates by probability, then their explore items (products they never
# bought: co-purchase neighbours, filled from GraphSAGE's) flagged explore = true, then the rest of
# their top `candidates` reorder candidates, so the first top_k + explore ranks are the list an
# unfiltered answer shows and the later ranks are what a filtered answer draws on. Only products
# current in the product dimension are ranked (a discontinued one leaves no gap in the ranks).
# `source` names the tier of each row: 'model' or 'explore' here, 'popular' for the cold-start
# tier `cold_start.with_popular_tier` appends.
RECOMMENDATIONS_SQL = """
WITH catalog AS (
    SELECT product_id, product_name, aisle_id, department_id
    FROM read_parquet($products, hive_partitioning = false)
    WHERE is_current
),
ranked AS (
    SELECT user_id, product_id, probability,
           row_number() OVER (PARTITION BY user_id ORDER BY probability DESC, product_id) AS model_rank
    FROM read_parquet($predictions, hive_partitioning = false)
    SEMI JOIN catalog USING (product_id)
    WHERE eval_set = $eval_set
),
reorders AS (
    SELECT user_id, model_rank, product_id, probability FROM ranked WHERE model_rank <= $candidates
),
listed AS (
    SELECT user_id, least(max(model_rank), $top_k) AS n_reorders FROM reorders GROUP BY user_id
),
{explore_ctes}
items AS (
    SELECT reorders.user_id,
           CASE WHEN model_rank <= $top_k THEN model_rank ELSE model_rank + {explore_shift} END AS rank,
           product_id, probability, false AS explore
    FROM reorders {explore_join}
    {explore_union}
)
SELECT items.user_id, items.rank::TINYINT AS rank, items.product_id, catalog.product_name,
       aisles.aisle, departments.department, items.probability::DOUBLE AS probability,
       items.explore, $model_version AS model_version,
       CASE WHEN items.explore THEN 'explore' ELSE 'model' END AS source
FROM items
JOIN catalog USING (product_id)
LEFT JOIN read_parquet($aisles, hive_partitioning = false) AS aisles USING (aisle_id)
LEFT JOIN read_parquet($departments, hive_partitioning = false) AS departments USING (department_id)
ORDER BY items.user_id, items.rank
"""

# An explore item's probability: the product has no user x product history, so the model cannot score
# it; it gets the product's first-purchase rate instead, the share of all history orders in which
# some shopper bought it for the first time (its buyers / orders), or for a product nobody has bought
# yet, the mean rate of the products in its aisle. A conservative, honestly calibrated prior.
EXPLORE_CTES = """
history_orders AS (
    SELECT sum(u_orders)::DOUBLE AS orders
    FROM read_parquet($user_features, hive_partitioning = false)
    WHERE framing = $framing
),
first_purchase AS (
    SELECT product_id, p_buyers, p_buyers / (SELECT orders FROM history_orders) AS rate
    FROM read_parquet($product_features, hive_partitioning = false)
    WHERE framing = $framing
),
-- Integer sums: a parallel avg() of doubles depends on thread order in the last bits.
aisle_first_purchase AS (
    SELECT catalog.aisle_id,
           sum(first_purchase.p_buyers)::DOUBLE / count(*) / (SELECT orders FROM history_orders) AS rate
    FROM first_purchase JOIN catalog USING (product_id)
    GROUP BY catalog.aisle_id
),
explore AS (
    SELECT e.user_id,
           coalesce(listed.n_reorders, 0)
             + row_number() OVER (PARTITION BY e.user_id ORDER BY e.explore_rank) AS rank,
           e.product_id,
           coalesce(first_purchase.rate, aisle_first_purchase.rate, 0.0) AS probability, true AS explore
    FROM read_parquet($explore, hive_partitioning = false) AS e
    JOIN catalog USING (product_id)
    LEFT JOIN listed USING (user_id)
    LEFT JOIN first_purchase USING (product_id)
    LEFT JOIN aisle_first_purchase USING (aisle_id)
),
explore_counts AS (
    SELECT user_id, count(*) AS n_explore FROM explore GROUP BY user_id
),
"""


def feature_batches(
    conn: duckdb.DuckDBPyConnection,
    inference_uri: str,
    feature_names: Sequence[str],
    batch_rows: int = SCORING_BATCH_ROWS,
    computed: Mapping[str, RowFeature] | None = None,
    users_uri: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """A feature set in batches: user_id, product_id, order_id, eval_set and the model's features in
    order; features named in `computed` (the GraphSAGE similarity) are computed from the row ids.
    With `users_uri` (a parquet file with a user_id column) only those users' rows."""
    computed = computed or {}
    columns = "".join(f', "{name}"' for name in feature_names if name not in computed)
    params = {}
    where = ""
    if users_uri is not None:
        params["users"] = users_uri
        where = " WHERE user_id IN (SELECT user_id FROM read_parquet($users, hive_partitioning = false))"
    reader = conn.sql(
        f"SELECT user_id, product_id, order_id, eval_set{columns} FROM {feature_source(conn, inference_uri)}{where}",
        params=params or None,
    ).to_arrow_reader(batch_rows)
    for batch in reader:
        if not computed:
            yield batch
            continue
        ids = [batch.column(name).to_numpy(zero_copy_only=False) for name in ("user_id", "product_id")]
        eval_sets = batch.column("eval_set").to_numpy(zero_copy_only=False)
        arrays = {name: batch.column(name) for name in ("user_id", "product_id", "order_id", "eval_set")}
        for name in feature_names:
            arrays[name] = (
                pa.array(np.asarray(computed[name](*ids, eval_sets), dtype=np.float32))
                if name in computed
                else batch.column(name)
            )
        yield pa.RecordBatch.from_pydict(arrays)


def score_feature_set(
    conn: duckdb.DuckDBPyConnection,
    inference_uri: str,
    feature_names: Sequence[str],
    score: Callable[[np.ndarray], np.ndarray],
    out_path: Path,
    batch_rows: int = SCORING_BATCH_ROWS,
    computed: Mapping[str, RowFeature] | None = None,
    users_uri: str | None = None,
) -> StagedParquet:
    """Probabilities for every row of a feature set (of `users_uri`'s users when given), streamed in
    batches so memory stays bounded."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(out_path, PREDICTIONS_SCHEMA, compression="zstd") as writer:
        for batch in feature_batches(conn, inference_uri, feature_names, batch_rows, computed, users_uri):
            features = np.empty((batch.num_rows, len(feature_names)), dtype=np.float32)
            for position, name in enumerate(feature_names):
                features[:, position] = batch.column(name).to_numpy(zero_copy_only=False)
            probabilities = np.asarray(score(features), dtype=np.float32)
            writer.write_table(
                pa.table(
                    {
                        "user_id": batch.column("user_id").cast(pa.int32()),
                        "product_id": batch.column("product_id").cast(pa.int32()),
                        "order_id": batch.column("order_id").cast(pa.int32()),
                        "eval_set": batch.column("eval_set").cast(pa.string()),
                        "probability": pa.array(probabilities, pa.float32()),
                    },
                    schema=PREDICTIONS_SCHEMA,
                )
            )
            rows += batch.num_rows
    return StagedParquet(out_path, rows)


@dataclass(frozen=True)
class ExploreInputs:
    """Where the explore items and the numbers behind their probability live (URIs)."""

    explore: str  # user_id, explore_rank, product_id (explore_items' output)
    user_features: str
    product_features: str
    framing: str = "serving"  # the features' framing the explore items were chosen in


def top_recommendations(
    conn: duckdb.DuckDBPyConnection,
    predictions_uri: str,
    products_uri: str,
    aisles_uri: str,
    departments_uri: str,
    model_version: str,
    out_path: Path,
    top_k: int = TOP_K,
    explore: ExploreInputs | None = None,
    candidates: int = CANDIDATES,
    eval_set: str = "serving",
) -> StagedParquet:
    """The top `top_k` products per user by probability, with current catalog names, followed by the
    user's explore items when `explore` is given, then the rest of the top `candidates`. `eval_set`
    picks the scored rows: `serving` for what is served, `train` for the held-out users the ranking
    report replays it on."""
    if candidates < top_k:
        raise ValueError(f"recommendations: candidates ({candidates}) must be at least top_k ({top_k})")
    params = {
        "predictions": predictions_uri,
        "products": products_uri,
        "aisles": aisles_uri,
        "departments": departments_uri,
        "model_version": model_version,
        "top_k": int(top_k),
        "candidates": int(candidates),
        "eval_set": eval_set,
    }
    if explore is not None:
        params |= {
            "explore": explore.explore,
            "user_features": explore.user_features,
            "product_features": explore.product_features,
            "framing": explore.framing,
        }
    sql = RECOMMENDATIONS_SQL.format(
        explore_ctes=EXPLORE_CTES if explore is not None else "",
        explore_shift="coalesce(explore_counts.n_explore, 0)" if explore is not None else "0",
        explore_join="LEFT JOIN explore_counts USING (user_id)" if explore is not None else "",
        explore_union="UNION ALL SELECT user_id, rank, product_id, probability, explore FROM explore"
        if explore is not None
        else "",
    )
    if explore is not None:
        sql, params = with_feature_tables(conn, sql, params, "user_features", "product_features")
    return copy_to_parquet(conn, sql, out_path, params=params)


# Personal explore items: the co-purchase neighbours (similar_items) of everything the user bought,
# each neighbour scored by the sum of its similarity to the user's products, never a product the
# user bought and only current products; users with fewer than k such neighbours are filled from
# their GraphSAGE embedding neighbours (`$fallback`, explore_items' output). Ties: product id.
# One batch of users ($users, within $first_user..$last_user so that row groups are skipped).
# Each user's k best by min_by(.., k), a top-k per group: a window sorting every candidate (22M rows
# per 25,000 users at full size) took a third of the query.
PERSONAL_EXPLORE_SQL = """
WITH history AS (
    SELECT DISTINCT user_id, product_id
    FROM read_parquet($user_product_features, hive_partitioning = false)
    WHERE framing = $framing AND user_id BETWEEN $first_user AND $last_user
      AND user_id IN (SELECT unnest($users))
),
current_products AS (
    SELECT DISTINCT product_id FROM read_parquet($products, hive_partitioning = false) WHERE is_current
),
neighbours AS (
    SELECT history.user_id, pairs.similar_product_id AS product_id, sum(pairs.score) AS score
    FROM history
    JOIN read_parquet($similar_items, hive_partitioning = false) AS pairs USING (product_id)
    GROUP BY ALL
),
fallback AS (
    SELECT user_id, product_id, max(similarity)::DOUBLE AS score
    FROM read_parquet($fallback, hive_partitioning = false)
    WHERE user_id BETWEEN $first_user AND $last_user AND user_id IN (SELECT unnest($users))
    GROUP BY ALL
),
candidates AS (
    SELECT user_id, product_id, 0 AS source, score FROM neighbours
    UNION ALL
    SELECT user_id, product_id, 1 AS source, score FROM fallback ANTI JOIN neighbours USING (user_id, product_id)
),
best AS (
    SELECT user_id,
           min_by({'source': source, 'score': score, 'product_id': product_id},
                  {'source': source, 'order': -score, 'product_id': product_id}, $k) AS top
    FROM candidates
    SEMI JOIN current_products USING (product_id)
    ANTI JOIN history USING (user_id, product_id)
    GROUP BY user_id
),
ranked AS (
    SELECT user_id, unnest(top) AS item, unnest(range(1, len(top) + 1)) AS position FROM best
)
SELECT user_id::INTEGER AS user_id, position::TINYINT AS explore_rank, item.product_id::INTEGER AS product_id,
       item.score::FLOAT AS similarity,
       CASE item.source WHEN 0 THEN 'co-purchase' ELSE 'graphsage' END AS explore_source
FROM ranked
ORDER BY user_id, explore_rank
"""


@dataclass(frozen=True)
class EmbeddingFallback:
    """The GraphSAGE embeddings (user_embeddings, product_embeddings URIs) whose nearest products
    fill a user's explore items when their co-purchase neighbourhood has too few."""

    user_embeddings: str
    product_embeddings: str


def personal_explore_items(
    conn: duckdb.DuckDBPyConnection,
    similar_items_uri: str,
    user_product_features_uri: str,
    products_uri: str,
    fallback: str | EmbeddingFallback,
    out_path: Path,
    k: int = 2,
    framing: str = "serving",
    user_ids: Sequence[int] | None = None,
    batch_users: int = EXPLORE_BATCH_USERS,
) -> StagedParquet:
    """Each user's `k` explore items from their own neighbourhood (see PERSONAL_EXPLORE_SQL):
    user_id, explore_rank, product_id, similarity, explore_source; only `user_ids` when given.
    Users are taken `batch_users` at a time, in id order, so memory does not grow with the users.
    `fallback` is explore_items' output for these users, or the embeddings to compute it from for
    only the users it can reach (fewer than k co-purchase items: the co-purchase ones rank first)."""
    if k < 1:
        raise ValueError(f"explore items: k must be at least 1, got {k}")
    if batch_users < 1:
        raise ValueError(f"explore items: batch_users must be at least 1, got {batch_users}")
    source = feature_source(conn, user_product_features_uri)
    if user_ids is None:
        users = conn.execute(
            f"SELECT DISTINCT user_id FROM {source} WHERE framing = ? ORDER BY 1", [framing]
        ).fetchnumpy()["user_id"]
    else:
        # Chosen users (a delta batch's) are spread over the whole id range, so every batch would scan
        # the whole feature chain: their history is read once instead.
        users = np.unique(np.asarray(user_ids, dtype=np.int64))
        with user_id_table(conn, "_explore_users", users) as chosen:
            conn.execute(
                "CREATE OR REPLACE TEMP TABLE explore_history AS SELECT DISTINCT user_id, product_id, framing "
                f"FROM {source} WHERE framing = ? AND user_id IN (SELECT user_id FROM {chosen})",
                [framing],
            )
        source = "explore_history"
    params = {"similar_items": similar_items_uri, "products": products_uri, "framing": framing, "k": int(k)}
    sql = PERSONAL_EXPLORE_SQL.replace(
        "read_parquet($user_product_features, hive_partitioning = false)", source
    )

    def explore(fallback_uri: str, chosen: np.ndarray, path: Path) -> StagedParquet:
        return _explore_batches(conn, sql, params | {"fallback": fallback_uri}, chosen, batch_users, path)

    try:
        if isinstance(fallback, str):
            return explore(fallback, users, out_path)
        return _explore_filled_where_short(
            conn, explore, users, out_path, fallback, user_product_features_uri, k, framing
        )
    finally:
        conn.execute("DROP TABLE IF EXISTS explore_history")


def _explore_filled_where_short(
    conn: duckdb.DuckDBPyConnection,
    explore: Callable[[str, np.ndarray, Path], StagedParquet],
    users: np.ndarray,
    out_path: Path,
    fallback: EmbeddingFallback,
    user_product_features_uri: str,
    k: int,
    framing: str,
) -> StagedParquet:
    """Co-purchase items for every user, then again with the GraphSAGE fallback for only the users
    left short: the same rows as a fallback computed for everyone (tested), which took 39 s at full
    size, where no user was short."""
    beside = out_path.with_name
    no_fallback = beside(f"{out_path.stem}.no_fallback.parquet")
    pq.write_table(EXPLORE_SCHEMA.empty_table(), no_fallback)
    co_purchase = beside(f"{out_path.stem}.co_purchase.parquet")
    explore(str(no_fallback), users, co_purchase)
    filled = conn.execute(
        "SELECT user_id FROM read_parquet(?, hive_partitioning = false) GROUP BY 1 HAVING count(*) >= ?",
        [str(co_purchase), k],
    ).fetchnumpy()["user_id"]
    short = np.setdiff1d(users, np.asarray(filled, dtype=np.int64))
    nearest = explore_from_lake(
        conn,
        fallback.user_embeddings,
        fallback.product_embeddings,
        user_product_features_uri,
        beside(f"{out_path.stem}.nearest.parquet"),
        framing=framing,
        user_ids=short,
    )
    refilled = beside(f"{out_path.stem}.refilled.parquet")
    explore(str(nearest.path), short, refilled)
    staged = copy_to_parquet(
        conn,
        "SELECT * FROM read_parquet($co_purchase, hive_partitioning = false) "
        "SEMI JOIN (SELECT unnest($filled) AS user_id) USING (user_id) "
        "UNION ALL SELECT * FROM read_parquet($refilled, hive_partitioning = false) "
        "ORDER BY user_id, explore_rank",
        out_path,
        params={
            "co_purchase": str(co_purchase),
            "refilled": str(refilled),
            "filled": [int(user) for user in filled],
        },
    )
    for path in (no_fallback, co_purchase, nearest.path, refilled):
        path.unlink()
    return staged


def _explore_batches(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict,
    users: np.ndarray,
    batch_users: int,
    out_path: Path,
) -> StagedParquet:
    """PERSONAL_EXPLORE_SQL for `batch_users` users at a time, the parts then joined in user order."""
    batches = [users[start : start + batch_users] for start in range(0, len(users), batch_users)] or [users]
    parts = [out_path.with_name(f"{out_path.stem}.part{index:04d}.parquet") for index in range(len(batches))]
    staged_parts = []
    for batch, part in zip(batches, parts, strict=True):
        bounds = (int(batch[0]), int(batch[-1])) if len(batch) else (0, -1)
        batch_params = params | {
            "users": [int(user) for user in batch],
            "first_user": bounds[0],
            "last_user": bounds[1],
        }
        staged_parts.append(copy_to_parquet(conn, sql, part, params=batch_params))
    if len(parts) == 1:
        parts[0].replace(out_path)
        return StagedParquet(out_path, staged_parts[0].row_count)
    staged = copy_to_parquet(
        conn,
        "SELECT * FROM read_parquet($parts, hive_partitioning = false) ORDER BY user_id, explore_rank",
        out_path,
        params={"parts": [str(part) for part in parts]},
    )
    for part in parts:
        part.unlink()
    return staged
