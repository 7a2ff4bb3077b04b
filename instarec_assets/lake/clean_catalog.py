"""The catalog in the clean zone: aisles and departments (latest name wins) and products as SCD type 2.

Each partition of a catalog table is the whole dimension as of that landing date, built from the
previous partition and the newly landed extract. A product whose name, aisle or department changes
gets its current row closed (`valid_to`, `is_current = false`) and a new row opened, so order lines
can always be joined to the product as it was when they were bought.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from instarec_assets.lake.accounting import CleanResult, RowAccounting, outcome_counts
from instarec_assets.lake.clean_orders import MAX_ID
from instarec_assets.lake.dedup import classify_duplicates
from instarec_assets.lake.duck import copy_to_parquet, create_view, scalar
from instarec_assets.lake.quarantine import QUARANTINE_SELECT, checked_record_sql, record_json_sql
from instarec_assets.lake.staging import StagedLocation
from instarec_assets.lake.validation import (
    Column,
    Text,
    WholeNumber,
    parsed_columns_sql,
    quarantine_reason_sql,
    typed_columns_sql,
)


@dataclass(frozen=True)
class Dimension:
    """A small lookup table keyed by one id, as landed in aisles.csv or departments.csv."""

    table: str
    key: str
    name: str

    @property
    def columns(self) -> tuple[Column, ...]:
        return (WholeNumber(self.key, 1, MAX_ID), Text(self.name))

    def empty_sql(self) -> str:
        return (
            f"SELECT NULL::INTEGER AS {self.key}, NULL::VARCHAR AS {self.name}, NULL::DATE AS updated_on, "
            "NULL::VARCHAR AS _source_file, NULL::TIMESTAMPTZ AS _ingested_at WHERE false"
        )


AISLES = Dimension("aisles", "aisle_id", "aisle")
DEPARTMENTS = Dimension("departments", "department_id", "department")

PRODUCT_COLUMNS: tuple[Column, ...] = (
    WholeNumber("product_id", 1, MAX_ID),
    Text("product_name"),
    WholeNumber("aisle_id", 1, MAX_ID),
    WholeNumber("department_id", 1, MAX_ID),
)
PRODUCT_CONTENT = ("product_name", "aisle_id", "department_id")

CLEAN_PRODUCTS_SCHEMA = """
SELECT NULL::INTEGER AS product_id, NULL::VARCHAR AS product_name, NULL::INTEGER AS aisle_id,
       NULL::INTEGER AS department_id, NULL::DATE AS valid_from, NULL::DATE AS valid_to,
       NULL::BOOLEAN AS is_current, NULL::VARCHAR AS _source_file, NULL::TIMESTAMPTZ AS _ingested_at
WHERE false
"""

CHECK_SQL = """
CREATE OR REPLACE TEMP TABLE {table}_checked AS
SELECT {typed},
       _source_file, _source_row, _ingested_at, quarantine_reason,
       {record} AS _record
FROM (SELECT *, {reason} AS quarantine_reason FROM (SELECT *, {parsed} FROM raw_{table}))
"""

# A landed row identical to the stored current row changes nothing: it counts as a duplicate.
MARK_UNCHANGED_SQL = """
UPDATE {table}_classified AS landed
SET outcome = 'duplicate'
FROM previous_current AS stored
WHERE landed.outcome = 'clean' AND landed.{key} = stored.{key}
  AND hash({landed_content}) = hash({stored_content})
"""

DIMENSION_SNAPSHOT_SQL = """
SELECT {key}, {name}, updated_on, _source_file, _ingested_at
FROM previous
WHERE {key} NOT IN (SELECT {key} FROM {table}_classified WHERE outcome = 'clean')
UNION ALL
SELECT {key}, {name}, DATE '{day}' AS updated_on, _source_file, _ingested_at
FROM {table}_classified
WHERE outcome = 'clean'
ORDER BY {key}
"""

PRODUCT_FOREIGN_KEYS_SQL = """
UPDATE products_checked AS product
SET quarantine_reason = CASE
      WHEN product.aisle_id NOT IN (SELECT aisle_id FROM known_aisles)
        THEN 'aisle_id ' || product.aisle_id || ': unknown aisle'
      ELSE 'department_id ' || product.department_id || ': unknown department'
    END,
    _record = to_json(struct_pack(product_id := product.product_id, product_name := product.product_name,
                                  aisle_id := product.aisle_id, department_id := product.department_id))::VARCHAR
WHERE product.quarantine_reason IS NULL
  AND (product.aisle_id NOT IN (SELECT aisle_id FROM known_aisles)
       OR product.department_id NOT IN (SELECT department_id FROM known_departments))
"""

PRODUCT_SNAPSHOT_SQL = """
WITH changed AS (SELECT product_id FROM products_classified WHERE outcome = 'clean')
SELECT product_id, product_name, aisle_id, department_id, valid_from,
       CASE WHEN is_current AND product_id IN (SELECT product_id FROM changed)
            THEN DATE '{day}' ELSE valid_to END AS valid_to,
       is_current AND product_id NOT IN (SELECT product_id FROM changed) AS is_current,
       _source_file, _ingested_at
FROM previous
UNION ALL
SELECT product_id, product_name, aisle_id, department_id, DATE '{day}' AS valid_from,
       NULL::DATE AS valid_to, true AS is_current, _source_file, _ingested_at
FROM products_classified
WHERE outcome = 'clean'
ORDER BY product_id, valid_from
"""


def clean_dimension(
    conn: duckdb.DuckDBPyConnection,
    dimension: Dimension,
    raw_uri: str,
    previous_uri: str | None,
    partition_date: dt.date,
    scratch: StagedLocation,
) -> CleanResult:
    """The dimension as of `partition_date`: the previous snapshot updated with the landed extract."""
    _prepare(conn, dimension.table, raw_uri, previous_uri, dimension.empty_sql(), current_only=False)
    _check(conn, dimension.table, dimension.columns)
    _classify(conn, dimension.table, dimension.key, (dimension.name,))
    snapshot_sql = DIMENSION_SNAPSHOT_SQL.format(
        key=dimension.key, name=dimension.name, table=dimension.table, day=partition_date.isoformat()
    )
    return _stage(conn, dimension.table, dimension.columns, snapshot_sql, scratch)


def clean_products(
    conn: duckdb.DuckDBPyConnection,
    raw_uri: str,
    previous_uri: str | None,
    aisles_uri: str,
    departments_uri: str,
    partition_date: dt.date,
    scratch: StagedLocation,
) -> CleanResult:
    """Products as SCD2 as of `partition_date`; rows with an unknown aisle or department are quarantined."""
    _prepare(conn, "products", raw_uri, previous_uri, CLEAN_PRODUCTS_SCHEMA, current_only=True)
    conn.read_parquet(aisles_uri, hive_partitioning=False).create_view("known_aisles", replace=True)
    conn.read_parquet(departments_uri, hive_partitioning=False).create_view("known_departments", replace=True)
    _check(conn, "products", PRODUCT_COLUMNS)
    conn.execute(PRODUCT_FOREIGN_KEYS_SQL)
    _classify(conn, "products", "product_id", PRODUCT_CONTENT)
    snapshot_sql = PRODUCT_SNAPSHOT_SQL.format(day=partition_date.isoformat())
    return _stage(conn, "products", PRODUCT_COLUMNS, snapshot_sql, scratch)


def _prepare(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    raw_uri: str,
    previous_uri: str | None,
    empty_sql: str,
    current_only: bool,
) -> None:
    conn.read_parquet(raw_uri, hive_partitioning=False).create_view(f"raw_{table}", replace=True)
    create_view(conn, "previous", [previous_uri] if previous_uri else [], empty_sql)
    where = "WHERE is_current" if current_only else ""
    conn.execute(f"CREATE OR REPLACE TEMP VIEW previous_current AS SELECT * FROM previous {where}")
    conn.execute("CREATE OR REPLACE TEMP VIEW nothing_earlier AS SELECT * FROM previous_current WHERE false")


def _check(conn: duckdb.DuckDBPyConnection, table: str, columns: tuple[Column, ...]) -> None:
    conn.execute(
        CHECK_SQL.format(
            table=table,
            typed=typed_columns_sql(columns),
            reason=quarantine_reason_sql(columns),
            parsed=parsed_columns_sql(columns),
            record=checked_record_sql(tuple(column.name for column in columns)),
        )
    )


def _classify(conn: duckdb.DuckDBPyConnection, table: str, key: str, content: tuple[str, ...]) -> None:
    """In-file duplicates and conflicts first, then rows identical to the stored current row."""
    classify_duplicates(conn, f"{table}_checked", "nothing_earlier", (key,), content, f"{table}_classified")
    conn.execute(
        MARK_UNCHANGED_SQL.format(
            table=table,
            key=key,
            landed_content=", ".join(f"landed.{column}" for column in content),
            stored_content=", ".join(f"stored.{column}" for column in content),
        )
    )


def _stage(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    columns: tuple[Column, ...],
    snapshot_sql: str,
    scratch: StagedLocation,
) -> CleanResult:
    clean = copy_to_parquet(conn, snapshot_sql, scratch / f"clean_{table}.parquet")
    quarantine = copy_to_parquet(
        conn,
        QUARANTINE_SELECT.format(
            classified=f"{table}_classified", record=record_json_sql(tuple(column.name for column in columns))
        ),
        scratch / f"quarantined_{table}.parquet",
    )
    counts = outcome_counts(conn, f"{table}_classified")
    accounting = RowAccounting(
        raw_rows=int(scalar(conn, f"SELECT count(*) FROM raw_{table}")),
        clean_rows=counts.get("clean", 0),
        quarantined_rows=quarantine.row_count,
        duplicate_rows=counts.get("duplicate", 0),
    )
    return CleanResult(clean, quarantine, accounting, counts)
