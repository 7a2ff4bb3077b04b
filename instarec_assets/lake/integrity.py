"""Integrity queries over stored lake tables: schema, key uniqueness, foreign keys."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from instarec_assets.lake.duck import scalar


def schema_differences(conn: duckdb.DuckDBPyConnection, uri: str, expected_select: str) -> list[str]:
    """Human-readable differences between a stored file's columns and the expected typed schema."""
    actual = {
        name: kind
        for name, kind, *_ in conn.execute(
            "DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = false)", [uri]
        ).fetchall()
    }
    expected = {name: kind for name, kind, *_ in conn.execute(f"DESCRIBE {expected_select}").fetchall()}
    differences = [f"missing column {name} ({kind})" for name, kind in expected.items() if name not in actual]
    differences += [f"unexpected column {name}" for name in actual if name not in expected]
    differences += [
        f"column {name} is {actual[name]}, expected {kind}"
        for name, kind in expected.items()
        if name in actual and actual[name] != kind
    ]
    return differences


def duplicate_keys(
    conn: duckdb.DuckDBPyConnection, uris: Sequence[str], key_columns: Sequence[str], where: str = "true"
) -> int:
    """How many key values occur more than once across the given files."""
    if not uris:
        return 0
    keys = ", ".join(key_columns)
    return int(
        scalar(
            conn,
            f"SELECT count(*) FROM (SELECT {keys} FROM read_parquet(?, hive_partitioning = false) WHERE {where} GROUP BY {keys} HAVING count(*) > 1)",
            [list(uris)],
        )
    )


def duplicate_keys_brought(
    conn: duckdb.DuckDBPyConnection,
    new_uris: Sequence[str],
    earlier_uris: Sequence[str],
    key_columns: Sequence[str],
) -> int:
    """How many key values of the new files occur more than once across new and earlier files: the
    duplicates a batch brings, at the cost of its own rows plus a semi-join of the earlier files on the
    first key column (instead of grouping the whole history; the earlier files were checked when they
    landed)."""
    if not new_uris:
        return 0
    if not earlier_uris:
        return duplicate_keys(conn, new_uris, key_columns)
    keys = ", ".join(key_columns)
    first = key_columns[0]
    return int(
        scalar(
            conn,
            f"WITH new AS (SELECT {keys} FROM read_parquet(?, hive_partitioning = false)) "
            f"SELECT count(*) FROM (SELECT {keys} FROM (SELECT * FROM new UNION ALL "
            f"SELECT {keys} FROM read_parquet(?, hive_partitioning = false) "
            f"SEMI JOIN (SELECT DISTINCT {first} FROM new) USING ({first})) GROUP BY {keys} HAVING count(*) > 1)",
            [list(new_uris), list(earlier_uris)],
        )
    )


def orphan_rows(
    conn: duckdb.DuckDBPyConnection,
    child_uris: Sequence[str],
    child_column: str,
    parent_uris: Sequence[str],
    parent_column: str,
) -> int:
    """Rows whose foreign key has no match among the parent files."""
    if not child_uris:
        return 0
    if not parent_uris:
        return int(
            scalar(
                conn, "SELECT count(*) FROM read_parquet(?, hive_partitioning = false)", [list(child_uris)]
            )
        )
    return int(
        scalar(
            conn,
            f"SELECT count(*) FROM read_parquet(?, hive_partitioning = false) AS child "
            f"ANTI JOIN read_parquet(?, hive_partitioning = false) AS parent ON child.{child_column} = parent.{parent_column}",
            [list(child_uris), list(parent_uris)],
        )
    )
