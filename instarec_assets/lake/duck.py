"""DuckDB connections that can read and write the lake, locally or on S3 through fsspec."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa

from instarec_assets.lake.staging import StagedLocation

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# Extensions are never downloaded at run time: S3 is reached through fsspec, not httpfs.
DUCKDB_SETTINGS: dict[str, str | bool | int] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


@contextmanager
def user_id_table(
    conn: duckdb.DuckDBPyConnection, name: str, user_ids: Sequence[int] | np.ndarray
) -> Iterator[str]:
    """`user_ids` as a one-column (`user_id` BIGINT) table `name` for the queries inside the block, e.g.
    `WHERE user_id IN (SELECT user_id FROM name)`: a semi-join instead of a list literal."""
    conn.register(name, pa.table({"user_id": np.asarray(user_ids, dtype=np.int64)}))
    try:
        yield name
    finally:
        conn.unregister(name)


def attach_filesystem(conn: duckdb.DuckDBPyConnection, fs: AbstractFileSystem | None) -> None:
    """Let DuckDB read and write `s3://` URIs through the lake's fsspec filesystem."""
    if fs is None or "file" in fs.protocol:
        return
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in conn.list_filesystems():
        conn.register_filesystem(fs)


def create_view(conn: duckdb.DuckDBPyConnection, name: str, uris: Sequence[str], empty_select: str) -> None:
    """A view over parquet files, or over `empty_select` (typed, zero rows) when there are none."""
    relation = conn.read_parquet(list(uris), hive_partitioning=False) if uris else conn.sql(empty_select)
    relation.create_view(name, replace=True)


@dataclass(frozen=True)
class StagedParquet:
    """A parquet file written completely, ready to be published to the lake: in local scratch space,
    or (the Spark job on EMR Serverless) under the staging URI."""

    path: StagedLocation
    row_count: int


def copy_to_parquet(
    conn: duckdb.DuckDBPyConnection, select_sql: str, path: StagedLocation, params: dict | None = None
) -> StagedParquet:
    """Write a query's result (with its `$name` parameters) to one zstd parquet file; count the rows.
    `conn` may be a SparkConnection, and `path` a StagingUri (an object store has no folders)."""
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    copy_sql = f"COPY ({select_sql}) TO '{_sql_path(path)}' (FORMAT parquet, COMPRESSION zstd)"
    if params:
        conn.execute(copy_sql, params)
    else:
        conn.execute(copy_sql)
    return StagedParquet(
        path=path,
        row_count=int(
            scalar(conn, "SELECT count(*) FROM read_parquet(?, hive_partitioning = false)", [str(path)])
        ),
    )


def scalar(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence | dict | None = None):
    """The single value of a one-row query (fetched whole: DuckDB 2 refuses half-read results)."""
    rows = conn.execute(sql, params).fetchall() if params is not None else conn.execute(sql).fetchall()
    return rows[0][0] if rows else None


def _sql_path(path: StagedLocation) -> str:
    """A scratch path as a SQL literal (our own generated paths; quotes doubled all the same)."""
    return str(path).replace("'", "''")
