"""Scored candidates become ranked recommendations with the product's current name, aisle and department."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from instarec_assets.lake.duck import StagedParquet, copy_to_parquet

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

# Serving rows only: the next order after the latest one we know, for every user.
RECOMMENDATIONS_SQL = """
WITH ranked AS (
    SELECT user_id, product_id, probability,
           row_number() OVER (PARTITION BY user_id ORDER BY probability DESC, product_id) AS rank
    FROM read_parquet('{predictions}', hive_partitioning = false)
    WHERE eval_set = 'serving'
)
SELECT ranked.user_id, ranked.rank::TINYINT AS rank, ranked.product_id, products.product_name,
       aisles.aisle, departments.department, ranked.probability::DOUBLE AS probability,
       false AS explore, '{model_version}' AS model_version
FROM ranked
JOIN read_parquet('{products}', hive_partitioning = false) AS products
  ON products.product_id = ranked.product_id AND products.is_current
LEFT JOIN read_parquet('{aisles}', hive_partitioning = false) AS aisles USING (aisle_id)
LEFT JOIN read_parquet('{departments}', hive_partitioning = false) AS departments USING (department_id)
WHERE ranked.rank <= {top_k}
ORDER BY ranked.user_id, ranked.rank
"""


def feature_batches(
    conn: duckdb.DuckDBPyConnection,
    inference_uri: str,
    feature_names: tuple[str, ...],
    batch_rows: int = SCORING_BATCH_ROWS,
) -> pa.RecordBatchReader:
    """A feature set in batches: user_id, product_id, order_id, eval_set and `feature_names` in order,
    at most `batch_rows` at a time, whichever backend scores them."""
    columns = ", ".join(f'"{name}"' for name in feature_names)
    return conn.sql(
        f"SELECT user_id, product_id, order_id, eval_set, {columns} FROM read_parquet($uri, hive_partitioning = false)",
        params={"uri": inference_uri},
    ).to_arrow_reader(batch_rows)


def score_feature_set(
    conn: duckdb.DuckDBPyConnection,
    inference_uri: str,
    feature_names: tuple[str, ...],
    score: Callable[[np.ndarray], np.ndarray],
    out_path: Path,
    batch_rows: int = SCORING_BATCH_ROWS,
) -> StagedParquet:
    """Probabilities for every row of a feature set, streamed in batches so memory stays bounded."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(out_path, PREDICTIONS_SCHEMA, compression="zstd") as writer:
        for batch in feature_batches(conn, inference_uri, feature_names, batch_rows):
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


def top_recommendations(
    conn: duckdb.DuckDBPyConnection,
    predictions_uri: str,
    products_uri: str,
    aisles_uri: str,
    departments_uri: str,
    model_version: str,
    out_path: Path,
    top_k: int = TOP_K,
) -> StagedParquet:
    """The top `top_k` products per user by probability, with current catalog names."""
    for value in (predictions_uri, products_uri, aisles_uri, departments_uri, model_version):
        if "'" in value:
            raise ValueError(f"unexpected quote in {value!r}")
    sql = RECOMMENDATIONS_SQL.format(
        predictions=predictions_uri,
        products=products_uri,
        aisles=aisles_uri,
        departments=departments_uri,
        model_version=model_version,
        top_k=int(top_k),
    )
    return copy_to_parquet(conn, sql, out_path)
