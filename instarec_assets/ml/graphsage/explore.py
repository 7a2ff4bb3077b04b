"""Using the embeddings: the user x product similarity feature and "explore" recommendations.

- `similarity_feature`: cosine similarity of the user's and the product's embeddings for candidate
  pairs, the hybrid feature joined into the XGBoost feature sets (NaN where either has no embedding).
- `explore_items`: per user, the `k` products nearest to the user's embedding (cosine) that the user
  never bought, so a user with little history (or none) still gets suggestions beyond re-orders.
  Users are scored in chunks against every product (one chunk x products matrix at a time), so
  memory stays bounded at any size.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from instarec_assets.features.targets import EARLIER_EVAL_SET
from instarec_assets.lake.duck import StagedParquet, user_id_table
from instarec_assets.lake.feature_delta import set_framing, with_feature_tables
from instarec_assets.ml.graphsage.graph import FRAMINGS

EXPLORE_K = 2
EXPLORE_CHUNK_USERS = 1024
SIMILARITY_CHUNK_ROWS = 1_000_000
EXPLORE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int32()),
        ("explore_rank", pa.int8()),
        ("product_id", pa.int32()),
        ("similarity", pa.float32()),
    ]
)


@dataclass
class EmbeddingTable:
    """Embeddings keyed by external id (sorted), L2-normalised so a dot product is a cosine."""

    ids: np.ndarray  # int64 (n,), sorted
    vectors: np.ndarray  # float32 (n, D), unit length (zero rows stay zero)

    @classmethod
    def from_vectors(cls, ids: np.ndarray, vectors: np.ndarray) -> EmbeddingTable:
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        vectors = np.asarray(vectors, dtype=np.float32)[order]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return cls(ids[order], np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0))

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the id has no embedding."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        position = np.clip(np.searchsorted(self.ids, ids), 0, self.ids.size - 1)
        return np.where(self.ids[position] == ids, position, -1)


def similarity_feature(
    user_ids: np.ndarray,
    product_ids: np.ndarray,
    users: EmbeddingTable,
    products: EmbeddingTable,
    chunk_rows: int = SIMILARITY_CHUNK_ROWS,
) -> np.ndarray:
    """Cosine similarity of each (user, product) pair's embeddings; NaN where one is missing."""
    user_ids = np.asarray(user_ids)
    product_ids = np.asarray(product_ids)
    out = np.full(user_ids.shape[0], np.nan, dtype=np.float32)
    for start in range(0, user_ids.shape[0], chunk_rows):
        stop = start + chunk_rows
        u = users.index_of(user_ids[start:stop])
        p = products.index_of(product_ids[start:stop])
        known = (u >= 0) & (p >= 0)
        values = np.einsum("ij,ij->i", users.vectors[u[known]], products.vectors[p[known]])
        out[start:stop][known] = values
    return out


def explore_items(
    users: EmbeddingTable,
    products: EmbeddingTable,
    bought_user_ids: np.ndarray,
    bought_product_ids: np.ndarray,
    k: int = EXPLORE_K,
    chunk_users: int = EXPLORE_CHUNK_USERS,
) -> pa.Table:
    """Per user, the `k` most similar products (cosine) among those the user never bought.

    Rows: user_id, explore_rank (1..k), product_id, similarity; a user who bought everything gets
    fewer. `bought_*` are the (user, product) pairs already bought, in external ids.
    """
    n_users, n_products = users.ids.size, products.ids.size
    k = min(k, n_products)
    if n_users == 0 or k == 0:
        return EXPLORE_SCHEMA.empty_table()
    bought_u = users.index_of(bought_user_ids)
    bought_p = products.index_of(bought_product_ids)
    known = (bought_u >= 0) & (bought_p >= 0)
    bought_u, bought_p = bought_u[known], bought_p[known]
    order = np.argsort(bought_u, kind="stable")
    bought_u, bought_p = bought_u[order], bought_p[order]
    starts = np.searchsorted(bought_u, np.arange(n_users + 1))
    product_matrix = torch.from_numpy(np.ascontiguousarray(products.vectors.T))
    user_matrix = torch.from_numpy(users.vectors)
    # One preallocated chunk x products buffer: a fresh 200 MB matrix per chunk costs page faults.
    buffer = torch.empty((min(chunk_users, n_users), n_products), dtype=torch.float32)
    out_user, out_product, out_score = [], [], []
    with torch.no_grad():
        for first in range(0, n_users, chunk_users):
            last = min(first + chunk_users, n_users)
            scores = torch.matmul(user_matrix[first:last], product_matrix, out=buffer[: last - first])
            a, b = starts[first], starts[last]
            if b > a:
                rows = torch.from_numpy(bought_u[a:b] - first)
                scores[rows, torch.from_numpy(bought_p[a:b])] = -torch.inf
            best, position = torch.topk(scores, k, dim=1)
            out_user.append(np.repeat(np.arange(first, last), k))
            out_product.append(position.numpy().reshape(-1))
            out_score.append(best.numpy().reshape(-1))
    user_index = np.concatenate(out_user)
    product_index = np.concatenate(out_product)
    score = np.concatenate(out_score)
    valid = np.isfinite(score)
    rank = np.tile(np.arange(1, k + 1, dtype=np.int8), n_users)
    return pa.table(
        {
            "user_id": pa.array(users.ids[user_index[valid]].astype(np.int32)),
            "explore_rank": pa.array(rank[valid]),
            "product_id": pa.array(products.ids[product_index[valid]].astype(np.int32)),
            "similarity": pa.array(score[valid].astype(np.float32)),
        },
        schema=EXPLORE_SCHEMA,
    )


# --- reading the user_embeddings / product_embeddings assets ------------------------------------

EMBEDDINGS_SQL = """
SELECT {id_column} AS id, embedding
FROM read_parquet($uri, hive_partitioning = false)
WHERE framing = $framing
ORDER BY {id_column}
"""


def load_embedding_table(
    conn: duckdb.DuckDBPyConnection, uri: str, framing: str, id_column: str
) -> EmbeddingTable:
    """One framing of a stored embeddings partition (`user_id` or `product_id` keyed)."""
    if id_column not in ("user_id", "product_id"):
        raise ValueError(f"id_column must be user_id or product_id, not {id_column!r}")
    table = conn.sql(
        EMBEDDINGS_SQL.format(id_column=id_column), params={"uri": uri, "framing": framing}
    ).to_arrow_table()
    ids = table.column("id").to_numpy(zero_copy_only=False).astype(np.int64)
    column = table.column("embedding").combine_chunks()
    if len(column) == 0:
        return EmbeddingTable.from_vectors(ids, np.zeros((0, 0), dtype=np.float32))
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return EmbeddingTable.from_vectors(ids, flat.reshape(len(column), -1))


def framing_of(eval_sets: np.ndarray) -> np.ndarray:
    """The embeddings framing each feature-set row reads: `serving` rows the serving graph, `train`
    and `test` rows (history before the target order) the target graph, so no label leaks in.
    `train_earlier` rows read `earlier`, which has no graph: the target graph holds their target
    order's lines, so their similarity is missing (NaN) rather than leaked."""
    eval_sets = np.asarray(eval_sets).astype(str)
    return np.select(
        [eval_sets == "serving", eval_sets == EARLIER_EVAL_SET], ["serving", "earlier"], default="target"
    )


@dataclass
class SimilarityLookup:
    """Both framings' embeddings, loaded once, for the hybrid feature of any feature-set rows."""

    users: dict[str, EmbeddingTable]
    products: dict[str, EmbeddingTable]

    @classmethod
    def from_lake(
        cls, conn: duckdb.DuckDBPyConnection, user_embeddings_uri: str, product_embeddings_uri: str
    ) -> SimilarityLookup:
        return cls(
            users={f: load_embedding_table(conn, user_embeddings_uri, f, "user_id") for f in FRAMINGS},
            products={
                f: load_embedding_table(conn, product_embeddings_uri, f, "product_id") for f in FRAMINGS
            },
        )

    def for_rows(self, user_ids: np.ndarray, product_ids: np.ndarray, eval_sets: np.ndarray) -> np.ndarray:
        """Cosine similarity per row from its framing's embeddings; NaN where one has none."""
        framings = framing_of(eval_sets)
        user_ids, product_ids = np.asarray(user_ids), np.asarray(product_ids)
        out = np.full(framings.shape[0], np.nan, dtype=np.float32)
        for framing in FRAMINGS:
            rows = framings == framing
            if rows.any():
                out[rows] = similarity_feature(
                    user_ids[rows], product_ids[rows], self.users[framing], self.products[framing]
                )
        return out


def similarity_for_rows(
    conn: duckdb.DuckDBPyConnection,
    user_embeddings_uri: str,
    product_embeddings_uri: str,
    user_ids: np.ndarray,
    product_ids: np.ndarray,
    eval_sets: np.ndarray,
) -> np.ndarray:
    """The hybrid feature for rows of training_set / inference_set, each from its framing's
    embeddings (see `framing_of`)."""
    lookup = SimilarityLookup.from_lake(conn, user_embeddings_uri, product_embeddings_uri)
    return lookup.for_rows(user_ids, product_ids, eval_sets)


# The same feature joined inside DuckDB, for a query that reads a feature set with SQL (an ad hoc
# analysis, a notebook). The pipeline itself uses `SimilarityLookup` (load_feature_rows and
# score_feature_set); a test keeps the two equal. `{rows}` is a query over a feature set with user_id,
# product_id and eval_set; the parameters $user_embeddings and $product_embeddings are the two assets'
# partition URIs.
SIMILARITY_SQL = """
SELECT s.*, list_cosine_similarity(ue.embedding, pe.embedding)::FLOAT AS {column}
FROM ({rows}) AS s
LEFT JOIN read_parquet($user_embeddings, hive_partitioning = false) AS ue
  ON ue.user_id = s.user_id AND ue.framing = {framing}
LEFT JOIN read_parquet($product_embeddings, hive_partitioning = false) AS pe
  ON pe.product_id = s.product_id AND pe.framing = {framing}
"""


def with_similarity_sql(rows_sql: str, column: str = "gs_similarity") -> str:
    """`rows_sql` plus the similarity column (see SIMILARITY_SQL); row order is not kept."""
    return SIMILARITY_SQL.format(rows=rows_sql, column=column, framing=set_framing("s"))


BOUGHT_SQL = """
SELECT user_id::BIGINT AS user_id, product_id::BIGINT AS product_id
FROM read_parquet($uri, hive_partitioning = false)
WHERE framing = $framing
"""


def explore_from_lake(
    conn: duckdb.DuckDBPyConnection,
    user_embeddings_uri: str,
    product_embeddings_uri: str,
    user_product_features_uri: str,
    out_path: Path,
    k: int = EXPLORE_K,
    framing: str = "serving",
    user_ids: np.ndarray | None = None,
) -> StagedParquet:
    """Explore items for every user's next order: `framing`'s embeddings (serving by default; the
    ranking report replays `target` on held-out users), excluding every product in the user's history
    of that framing (user_product_features). `user_ids` limits it to those users."""
    users = load_embedding_table(conn, user_embeddings_uri, framing, "user_id")
    if user_ids is not None:
        keep = np.isin(users.ids, np.asarray(user_ids, dtype=np.int64))
        users = EmbeddingTable(users.ids[keep], users.vectors[keep])
    products = load_embedding_table(conn, product_embeddings_uri, framing, "product_id")
    # Only the chosen users' history, not every user's, when users are chosen.
    chosen = nullcontext() if user_ids is None else user_id_table(conn, "_explore_bought_users", users.ids)
    with chosen as table_name:
        bought_sql = BOUGHT_SQL
        if table_name is not None:
            bought_sql += f"  AND user_id IN (SELECT user_id FROM {table_name})\n"
        sql, params = with_feature_tables(
            conn, bought_sql, {"uri": user_product_features_uri, "framing": framing}, "uri"
        )
        bought = conn.sql(sql, params=params).to_arrow_table()
    table = explore_items(
        users,
        products,
        bought.column("user_id").to_numpy(zero_copy_only=False),
        bought.column("product_id").to_numpy(zero_copy_only=False),
        k=k,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_path, compression="zstd")
    return StagedParquet(out_path, table.num_rows)
