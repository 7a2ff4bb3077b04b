"""The clean zone's key checks on real parquet: what a batch brings against what is stored."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from instarec_assets.lake.integrity import duplicate_keys, duplicate_keys_brought

KEYS = ["order_id", "product_id"]


def _lines(path: Path, rows: list[tuple[int, int]]) -> str:
    orders, products = zip(*rows, strict=True) if rows else ((), ())
    pq.write_table(
        pa.table({"order_id": pa.array(orders, pa.int64()), "product_id": pa.array(products, pa.int64())}),
        path,
    )
    return str(path)


def test_a_batch_brings_the_duplicates_within_it_and_against_stored_lines(tmp_path: Path) -> None:
    conn = duckdb.connect()
    earlier = [
        _lines(tmp_path / "day1.parquet", [(1, 10), (1, 11), (2, 10)]),
        _lines(tmp_path / "day2.parquet", [(3, 12)]),
    ]
    clean = _lines(tmp_path / "clean.parquet", [(4, 10), (1, 12), (3, 13)])  # late lines of stored orders
    assert duplicate_keys_brought(conn, [clean], earlier, KEYS) == 0
    repeated = _lines(tmp_path / "repeated.parquet", [(1, 11), (4, 10), (4, 10), (3, 12), (5, 1)])
    # (1, 11) and (3, 12) are stored already, (4, 10) twice in the batch: three keys
    assert duplicate_keys_brought(conn, [repeated], earlier, KEYS) == 3
    # the whole-history count agrees when the stored batches are clean
    assert duplicate_keys(conn, [*earlier, repeated], KEYS) == 3
    assert duplicate_keys_brought(conn, [repeated], [], KEYS) == 1
    assert duplicate_keys_brought(conn, [], earlier, KEYS) == 0
