"""The metadata helpers the zone assets share."""

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from instarec_assets.assets.metadata import preview, rows_by_eval_set
from instarec_assets.lake.feature_delta import feature_source


def test_rows_by_eval_set_counts_each_framing_of_a_feature_set(tmp_path):
    path = tmp_path / "inference_set.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": [1, 1, 2, 3, 3, 3],
                "eval_set": ["test", "test", "serving", "serving", "serving", "test"],
            }
        ),
        path,
    )
    conn = duckdb.connect()
    metadata = rows_by_eval_set(conn, feature_source(conn, str(path)))
    assert {name: entry.value for name, entry in metadata.items()} == {"serving_rows": 3, "test_rows": 3}


def test_preview_of_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"eval_set": pa.array([], pa.string())}), path)
    assert preview(duckdb.connect(), str(path)).value == "_no rows_"
