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
    assert {name: entry.value for name, entry in metadata.items()} == {
        "serving_rows": 3,
        "test_rows": 3,
        "resolved_rows": 6,
    }


def test_rows_by_eval_set_gives_the_label_rate_of_the_labelled_rows(tmp_path):
    path = tmp_path / "training_set.parquet"
    pq.write_table(
        pa.table(
            {"eval_set": ["train", "train", "train", "earlier", "earlier"], "label": [1, 0, None, 1, 1]}
        ),
        path,
    )
    conn = duckdb.connect()
    metadata = rows_by_eval_set(conn, feature_source(conn, str(path)), label_rate=True)
    values = {name: entry.value for name, entry in metadata.items()}
    assert values == {"earlier_rows": 2, "train_rows": 3, "resolved_rows": 5, "label_rate": 0.75}
    assert values["label_rate"] == duckdb.sql(f"SELECT avg(label) FROM '{path}'").fetchall()[0][0]


def test_preview_of_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"eval_set": pa.array([], pa.string())}), path)
    assert preview(duckdb.connect(), str(path)).value == "_no rows_"
