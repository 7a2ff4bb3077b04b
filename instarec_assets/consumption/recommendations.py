"""Scored candidates become ranked recommendations with the product's current name, aisle and department."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from instarec_assets.lake.duck import StagedParquet, copy_to_parquet
from instarec_assets.ml.reorder_model import RowFeature

TOP_K = 10
SCORING_BATCH_ROWS = 1_000_000

PREDICTIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int32()),
        ("product_id", pa.int32()),
        ("order_id", pa.int32()),
        ("eval_set", pa.string()),
        ("probability", pa.float32()),
    ]
)

# Serving rows only: the next order after the latest one we know, for every user. Each user's list is
# their top `top_k` reorder candidates by probability, then their explore items (products they never
# bought, nearest to them in the GraphSAGE embedding space) ranked after them, flagged explore = true.
RECOMMENDATIONS_SQL = """
WITH ranked AS (
    SELECT user_id, product_id, probability,
           row_number() OVER (PARTITION BY user_id ORDER BY probability DESC, product_id) AS rank
    FROM read_parquet($predictions, hive_partitioning = false)
    WHERE eval_set = 'serving'
),
reorders AS (
    SELECT user_id, rank, product_id, probability, false AS explore FROM ranked WHERE rank <= $top_k
),
listed AS (
    SELECT user_id, max(rank) AS n_reorders FROM reorders GROUP BY user_id
),
catalog AS (
    SELECT product_id, product_name, aisle_id, department_id
    FROM read_parquet($products, hive_partitioning = false)
    WHERE is_current
),
{explore_ctes}
items AS (
    SELECT * FROM reorders
    {explore_union}
)
SELECT items.user_id, items.rank::TINYINT AS rank, items.product_id, catalog.product_name,
       aisles.aisle, departments.department, items.probability::DOUBLE AS probability,
       items.explore, $model_version AS model_version
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
    WHERE framing = 'serving'
),
first_purchase AS (
    SELECT product_id, p_buyers, p_buyers / (SELECT orders FROM history_orders) AS rate
    FROM read_parquet($product_features, hive_partitioning = false)
    WHERE framing = 'serving'
),
-- Integer sums: a parallel avg() of doubles depends on thread order in the last bits.
aisle_first_purchase AS (
    SELECT catalog.aisle_id,
           sum(first_purchase.p_buyers)::DOUBLE / count(*) / (SELECT orders FROM history_orders) AS rate
    FROM first_purchase JOIN catalog USING (product_id)
    GROUP BY catalog.aisle_id
),
explore AS (
    SELECT e.user_id, coalesce(listed.n_reorders, 0) + e.explore_rank AS rank, e.product_id,
           coalesce(first_purchase.rate, aisle_first_purchase.rate, 0.0) AS probability, true AS explore
    FROM read_parquet($explore, hive_partitioning = false) AS e
    JOIN catalog USING (product_id)
    LEFT JOIN listed USING (user_id)
    LEFT JOIN first_purchase USING (product_id)
    LEFT JOIN aisle_first_purchase USING (aisle_id)
),
"""


def feature_batches(
    conn: duckdb.DuckDBPyConnection,
    inference_uri: str,
    feature_names: Sequence[str],
    batch_rows: int = SCORING_BATCH_ROWS,
    computed: Mapping[str, RowFeature] | None = None,
) -> Iterator[pa.RecordBatch]:
    """A feature set in batches: user_id, product_id, order_id, eval_set and the model's features in
    order; features named in `computed` (the GraphSAGE similarity) are computed from the row ids."""
    computed = computed or {}
    columns = "".join(f', "{name}"' for name in feature_names if name not in computed)
    reader = conn.sql(
        f"SELECT user_id, product_id, order_id, eval_set{columns} FROM read_parquet($uri, hive_partitioning = false)",
        params={"uri": inference_uri},
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
) -> StagedParquet:
    """Probabilities for every row of a feature set, streamed in batches so memory stays bounded."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(out_path, PREDICTIONS_SCHEMA, compression="zstd") as writer:
        for batch in feature_batches(conn, inference_uri, feature_names, batch_rows, computed):
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
) -> StagedParquet:
    """The top `top_k` products per user by probability, with current catalog names, followed by the
    user's explore items when `explore` is given."""
    params = {
        "predictions": predictions_uri,
        "products": products_uri,
        "aisles": aisles_uri,
        "departments": departments_uri,
        "model_version": model_version,
        "top_k": int(top_k),
    }
    if explore is not None:
        params |= {
            "explore": explore.explore,
            "user_features": explore.user_features,
            "product_features": explore.product_features,
        }
    sql = RECOMMENDATIONS_SQL.format(
        explore_ctes=EXPLORE_CTES if explore is not None else "",
        explore_union="UNION ALL SELECT user_id, rank, product_id, probability, explore FROM explore"
        if explore is not None
        else "",
    )
    return copy_to_parquet(conn, sql, out_path, params=params)
