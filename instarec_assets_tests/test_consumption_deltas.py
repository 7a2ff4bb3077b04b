"""Delta partitions: the full-or-delta decision and the current rows of a chain of partitions."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.consumption.deltas import (
    DELTA,
    FULL,
    ModelState,
    PartitionRecord,
    create_latest_rows_view,
    decide_scoring_mode,
    resolve_latest_rows,
)

KEPT = ModelState("xgb-1", False, "gs-1", False)


def _record(batch: str, mode: str) -> PartitionRecord:
    return PartitionRecord(batch, mode, "xgb-1", "gs-1")


def _write(path: Path, rows: list[tuple[int, int, float]]) -> str:
    users, products, probabilities = zip(*rows, strict=True) if rows else ((), (), ())
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(users, pa.int32()),
                "product_id": pa.array(products, pa.int32()),
                "probability": pa.array(probabilities, pa.float32()),
            }
        ),
        path,
    )
    return str(path)


def test_a_batch_with_the_base_models_is_a_delta_on_the_previous_partition():
    decision = decide_scoring_mode("2024-01-08", _record("2024-01-08", FULL), [], KEPT)
    assert (decision.mode, decision.base, decision.chain_length) == (DELTA, "2024-01-08", 1)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"previous_batch": None, "base": None}, "first batch"),
        ({"base": None}, "has no predictions to build on"),
        ({"full_rescore": True}, "full_rescore"),
        ({"features_rebuilt": True}, "rebuilt in full"),
        ({"models": ModelState("xgb-2", True, "gs-1", False)}, "new XGBoost model xgb-2"),
        ({"models": ModelState("xgb-2", False, "gs-1", False)}, "new XGBoost model xgb-2"),
        ({"models": ModelState("xgb-1", False, "gs-1", True)}, "new GraphSAGE model"),
        ({"models": ModelState("xgb-1", False, None, False)}, "new GraphSAGE model"),
    ],
)
def test_full_when_there_is_no_base_or_a_model_changed_or_asked(kwargs, reason):
    arguments = {
        "previous_batch": "2024-01-08",
        "base": _record("2024-01-08", FULL),
        "earlier": [],
        "models": KEPT,
    }
    options = {name: kwargs.pop(name) for name in ("full_rescore", "features_rebuilt") if name in kwargs}
    decision = decide_scoring_mode(**{**arguments, **kwargs}, **options)
    assert decision.mode == FULL and reason in decision.reason and decision.base is None


def test_a_chain_at_its_limit_makes_the_next_batch_full():
    earlier = [_record("2024-01-01", FULL), _record("2024-01-08", DELTA)]
    base = _record("2024-01-15", DELTA)
    assert decide_scoring_mode("2024-01-15", base, earlier, KEPT, max_chain=3).chain_length == 3
    decision = decide_scoring_mode("2024-01-15", base, earlier, KEPT, max_chain=2)
    assert decision.mode == FULL and "would reach 3 deltas (limit 2)" in decision.reason


def test_each_user_gets_the_rows_of_the_newest_partition_holding_them(tmp_path: Path):
    chain = [
        _write(tmp_path / "full.parquet", [(1, 10, 0.1), (1, 11, 0.2), (2, 10, 0.3), (3, 12, 0.4)]),
        # user 1 re-scored with fewer candidates: the old row for product 11 must not come back
        _write(tmp_path / "delta1.parquet", [(1, 10, 0.5), (2, 10, 0.6)]),
        _write(tmp_path / "delta2.parquet", [(2, 14, 0.7), (4, 15, 0.8)]),
    ]
    staged = resolve_latest_rows(
        duckdb.connect(), chain, tmp_path / "out.parquet", order_by=("user_id", "product_id")
    )
    rows = [tuple(row.values()) for row in pq.read_table(staged.path).to_pylist()]
    assert rows == [
        (1, 10, pytest.approx(0.5)),
        (2, 14, pytest.approx(0.7)),
        (3, 12, pytest.approx(0.4)),
        (4, 15, pytest.approx(0.8)),
    ]
    assert staged.row_count == 4


def test_a_chain_reads_columns_by_name_and_one_partition_is_itself(tmp_path: Path):
    full = tmp_path / "full.parquet"
    pq.write_table(pa.table({"probability": [0.1], "user_id": [1], "product_id": [10]}), full)
    delta = _write(tmp_path / "delta.parquet", [(2, 11, 0.2)])
    conn = duckdb.connect()
    create_latest_rows_view(conn, "current", [str(full), delta])
    assert conn.sql("SELECT user_id, product_id FROM current ORDER BY 1").fetchall() == [(1, 10), (2, 11)]
    create_latest_rows_view(conn, "single", [delta])
    assert conn.sql("SELECT user_id FROM single").fetchall() == [(2,)]
    with pytest.raises(ValueError, match="at least one partition"):
        create_latest_rows_view(conn, "none", [])
