"""Scored candidates become ranked recommendations with the product's current name, aisle and department."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from instarec_assets.lake.duck import StagedParquet, copy_to_parquet, user_id_table
from instarec_assets.lake.feature_delta import feature_source, with_feature_tables
from instarec_assets.ml.graphsage.explore import EXPLORE_SCHEMA, explore_from_lake
from instarec_assets.ml.reorder_model import RowFeature

TOP_K = 10  # the head of a user's list: what an unfiltered answer shows first
CANDIDATES = 50  # reorder candidates stored per user, so that a filtered answer still fills k
SCORING_BATCH_ROWS = 1_000_000
# Users per personal-explore batch: each user's bought products fan out ~17-fold to neighbours (31M
# sums per 25,000 users at full size), which bounds the batch's memory.
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
# their GraphSAGE embedding neighbours (explore_items' output, its best similarity per product).
# Ties: product id. The sums are a sparse product (users x bought) @ (bought x neighbour) with
# scipy, one batch of users at a time: the same sums grouped in DuckDB took 3.9 s of 7.5 s for
# 29,527 users at full size (31M user x neighbour sums), scipy 1.0 s, and the top k per user is
# k vectorised passes instead of a sort.
HISTORY_SQL = """
SELECT DISTINCT user_id::BIGINT AS user_id, product_id::BIGINT AS product_id
FROM {source}
WHERE framing = $framing AND user_id BETWEEN $first_user AND $last_user AND user_id IN (SELECT unnest($users))
"""
SIMILAR_PAIRS_SQL = """
SELECT product_id::BIGINT AS product_id, similar_product_id::BIGINT AS similar_product_id,
       score::DOUBLE AS score
FROM read_parquet($similar_items, hive_partitioning = false)
"""
CURRENT_PRODUCTS_SQL = """
SELECT DISTINCT product_id::BIGINT AS product_id FROM read_parquet($products, hive_partitioning = false)
WHERE is_current
"""
FALLBACK_SQL = """
SELECT user_id::BIGINT AS user_id, product_id::BIGINT AS product_id, max(similarity)::DOUBLE AS score
FROM read_parquet($fallback, hive_partitioning = false)
WHERE user_id BETWEEN $first_user AND $last_user AND user_id IN (SELECT unnest($users))
GROUP BY ALL
"""
CO_PURCHASE, GRAPHSAGE = "co-purchase", "graphsage"
PERSONAL_EXPLORE_SCHEMA = pa.schema([*EXPLORE_SCHEMA, ("explore_source", pa.string())])


@dataclass(frozen=True)
class _Neighbourhoods:
    """similar_items as a sparse matrix over a dense product index (ids sorted, so index order is id
    order): [anchor, neighbour] = the pair's score (repeated pairs summed, as a join and a sum would)."""

    ids: np.ndarray  # int64, sorted
    scores: sp.csr_matrix
    current: np.ndarray  # bool per index

    @classmethod
    def load(
        cls, conn: duckdb.DuckDBPyConnection, similar_items_uri: str, products_uri: str
    ) -> _Neighbourhoods:
        pairs = conn.execute(SIMILAR_PAIRS_SQL, {"similar_items": similar_items_uri}).fetchnumpy()
        current = conn.execute(CURRENT_PRODUCTS_SQL, {"products": products_uri}).fetchnumpy()["product_id"]
        anchors = np.asarray(pairs["product_id"], dtype=np.int64)
        neighbours = np.asarray(pairs["similar_product_id"], dtype=np.int64)
        ids = np.unique(np.concatenate([anchors, neighbours, np.asarray(current, dtype=np.int64)]))
        scores = sp.csr_matrix(
            (
                np.asarray(pairs["score"], dtype=np.float64),
                (np.searchsorted(ids, anchors), np.searchsorted(ids, neighbours)),
            ),
            shape=(ids.size, ids.size),
        )
        return cls(ids, scores, np.isin(ids, current))

    def index_of(self, product_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of `product_ids` in the index, and the mask of those that are in it."""
        return _find(self.ids, product_ids)


def _top_k_per_row(indptr: np.ndarray, columns: np.ndarray, scores: np.ndarray, k: int) -> list[np.ndarray]:
    """The positions of each row's `k` best entries of a CSR matrix (by score, then lowest column;
    -inf entries never), one array per rank: k passes over the entries instead of sorting them.
    Each picked entry of `scores` is overwritten with -inf."""
    starts = indptr[:-1][np.diff(indptr) > 0]
    lengths = np.diff(np.r_[starts, scores.size])
    ranks = []
    for _ in range(k):
        if scores.size == 0:
            break
        best = np.maximum.reduceat(scores, starts)
        ties = np.flatnonzero((scores == np.repeat(best, lengths)) & (scores > -np.inf))
        if ties.size == 0:
            break
        tie_rows = np.searchsorted(indptr, ties, side="right") - 1
        row_starts = np.flatnonzero(np.r_[True, tie_rows[1:] != tie_rows[:-1]])
        lowest = np.minimum.reduceat(columns[ties], row_starts)
        picked = ties[columns[ties] == np.repeat(lowest, np.diff(np.r_[row_starts, ties.size]))]
        ranks.append(picked)
        scores[picked] = -np.inf
    return ranks


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `keys` is (or would be) in `sorted_keys` (ascending, clamped to a valid index),
    and which of them are there."""
    if sorted_keys.size == 0:
        return np.zeros(keys.size, dtype=np.int64), np.zeros(keys.size, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return at, sorted_keys[at] == keys


def _explore_batch(
    conn: duckdb.DuckDBPyConnection,
    source: str,
    neighbourhoods: _Neighbourhoods,
    fallback_uri: str,
    users: np.ndarray,
    k: int,
    framing: str,
) -> pa.Table:
    """One batch of users' explore items (PERSONAL_EXPLORE_SCHEMA), sorted by user and rank."""
    if users.size == 0:
        return PERSONAL_EXPLORE_SCHEMA.empty_table()
    bounds = {
        "users": [int(user) for user in users],
        "first_user": int(users[0]),
        "last_user": int(users[-1]),
    }
    history = conn.execute(
        HISTORY_SQL.replace("{source}", source), {"framing": framing} | bounds
    ).fetchnumpy()
    history_rows = np.searchsorted(users, np.asarray(history["user_id"], dtype=np.int64))
    history_products = np.asarray(history["product_id"], dtype=np.int64)
    at, known = neighbourhoods.index_of(history_products)
    n_products = neighbourhoods.ids.size
    bought = sp.csr_matrix(
        (np.ones(int(known.sum())), (history_rows[known], at[known])), shape=(users.size, n_products)
    )
    # every neighbour's summed score, less the products the user bought (their sums cancel exactly);
    # scores are positive (similar_items drops pairs scoring 0), so no candidate sums to 0
    sums = bought @ neighbourhoods.scores
    sums = (sums - sums.multiply(bought)).tocsr()
    sums.eliminate_zeros()
    scores = np.where(neighbourhoods.current[sums.indices], sums.data, -np.inf)
    ranks = _top_k_per_row(sums.indptr, sums.indices, scores, k)
    top = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    top_rows = np.searchsorted(sums.indptr, top, side="right") - 1
    by_user = np.lexsort((np.repeat(np.arange(len(ranks)), [rank.size for rank in ranks]), top_rows))
    top, top_rows = top[by_user], top_rows[by_user]
    top_columns = sums.indices[top].astype(np.int64)
    co_products, co_scores = neighbourhoods.ids[top_columns], sums.data[top]

    # the embedding fill, for users with fewer than k co-purchase items
    listed = np.bincount(top_rows, minlength=users.size)
    fill = conn.execute(FALLBACK_SQL, {"fallback": fallback_uri} | bounds).fetchnumpy()
    fill_users = np.asarray(fill["user_id"], dtype=np.int64)
    fill_products = np.asarray(fill["product_id"], dtype=np.int64)
    fill_scores = np.asarray(fill["score"], dtype=np.float64)
    fill_rows = np.searchsorted(users, fill_users)
    fill_at, fill_known = neighbourhoods.index_of(fill_products)
    usable = (listed[fill_rows] < k) & fill_known
    usable[usable] &= neighbourhoods.current[fill_at[usable]]
    if usable.any():
        width = np.int64(max(n_products, 1))
        fill_keys = fill_rows[usable] * width + fill_at[usable]
        history_keys = np.sort(history_rows[known] * width + at[known])
        taken_keys = np.sort(top_rows * width + top_columns)
        usable[usable] = ~_find(history_keys, fill_keys)[1] & ~_find(taken_keys, fill_keys)[1]
    fill_rows, fill_products, fill_scores = fill_rows[usable], fill_products[usable], fill_scores[usable]
    order = np.lexsort((fill_products, -fill_scores, fill_rows))
    fill_rows, fill_products, fill_scores = fill_rows[order], fill_products[order], fill_scores[order]
    fill_place = np.arange(fill_rows.size) - np.searchsorted(fill_rows, fill_rows, side="left")
    wanted = fill_place < (k - listed[fill_rows])

    # each user's co-purchase items (already by rank), then their fill (by score): a stable sort by user
    item_rows = np.concatenate([top_rows, fill_rows[wanted]])
    order = np.argsort(item_rows, kind="stable")
    item_rows = item_rows[order]
    rank = np.arange(item_rows.size) - np.searchsorted(item_rows, item_rows, side="left") + 1
    from_fill = np.concatenate([np.zeros(top.size, bool), np.ones(int(wanted.sum()), bool)])[order]
    return pa.table(
        {
            "user_id": pa.array(users[item_rows], pa.int32()),
            "explore_rank": pa.array(rank, pa.int8()),
            "product_id": pa.array(np.concatenate([co_products, fill_products[wanted]])[order], pa.int32()),
            "similarity": pa.array(np.concatenate([co_scores, fill_scores[wanted]])[order], pa.float32()),
            "explore_source": pa.array(np.where(from_fill, GRAPHSAGE, CO_PURCHASE)),
        },
        schema=PERSONAL_EXPLORE_SCHEMA,
    )


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
    """Each user's `k` explore items from their own neighbourhood (see HISTORY_SQL above):
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
    neighbourhoods = _Neighbourhoods.load(conn, similar_items_uri, products_uri)

    def explore(fallback_uri: str, chosen: np.ndarray, path: Path) -> StagedParquet:
        batches = [chosen[start : start + batch_users] for start in range(0, len(chosen), batch_users)]
        rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(path, PERSONAL_EXPLORE_SCHEMA, compression="zstd") as writer:
            for batch in batches or [chosen]:
                table = _explore_batch(conn, source, neighbourhoods, fallback_uri, batch, k, framing)
                writer.write_table(table)
                rows += table.num_rows
        return StagedParquet(path, rows)

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
