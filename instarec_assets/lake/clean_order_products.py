"""clean_order_products: prior and train order lines, typed, checked against orders and products."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from instarec_assets.lake.accounting import CleanResult, RowAccounting, outcome_counts
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA, MAX_ID
from instarec_assets.lake.dedup import classify_duplicates
from instarec_assets.lake.duck import copy_to_parquet, create_view, scalar
from instarec_assets.lake.quarantine import QUARANTINE_SELECT, checked_record_sql, record_json_sql
from instarec_assets.lake.staging import StagedLocation
from instarec_assets.lake.validation import (
    WholeNumber,
    parsed_columns_sql,
    quarantine_reason_sql,
    typed_columns_sql,
)

LINE_COLUMNS = (
    WholeNumber("order_id", 1, MAX_ID),
    WholeNumber("product_id", 1, MAX_ID),
    WholeNumber("add_to_cart_order", 1, 10_000, sql_type="SMALLINT"),
    WholeNumber("reordered", 0, 1, sql_type="TINYINT"),
)
LINE_TEXT_COLUMNS = tuple(column.name for column in LINE_COLUMNS)

CLEAN_ORDER_PRODUCTS_SCHEMA = """
SELECT NULL::INTEGER AS order_id, NULL::INTEGER AS product_id, NULL::SMALLINT AS add_to_cart_order,
       NULL::TINYINT AS reordered, NULL::VARCHAR AS eval_set, NULL::VARCHAR AS _source_file,
       NULL::TIMESTAMPTZ AS _ingested_at
WHERE false
"""

# One pass over the landed lines: parse, validate, then check against orders and products. The rows
# keep only what classification needs; `_source_file` (one file per eval_set, a long string on
# every one of ~35M rows) is added back when the clean and quarantine files are written.
# Cross-table validation: a line must belong to a known order of the matching kind and a known product.
# Prior lines may arrive for an order first landed as `test` (its contents become known later).
CHECK_LINES_SQL = """
CREATE OR REPLACE TEMP TABLE lines_checked AS
SELECT lines.* EXCLUDE (quarantine_reason),
       CASE
         WHEN lines.order_id IN (SELECT order_id FROM forgotten_orders) THEN 'forgotten'
         WHEN lines.quarantine_reason IS NOT NULL THEN lines.quarantine_reason
         WHEN known_orders.order_id IS NULL
           THEN 'order_id ' || lines.order_id || ': unknown order (not in orders up to this partition)'
         WHEN known_products.product_id IS NULL
           THEN 'product_id ' || lines.product_id || ': unknown product'
         WHEN lines.eval_set = 'train' AND known_orders.eval_set <> 'train'
           THEN 'order_products__train line for ' || known_orders.eval_set || ' order ' || lines.order_id
         WHEN lines.eval_set = 'prior' AND known_orders.eval_set = 'train'
           THEN 'order_products__prior line for train order ' || lines.order_id
       END AS quarantine_reason
FROM (
    SELECT {typed}, eval_set, _source_row, _ingested_at, quarantine_reason,
           {record} AS _record
    FROM (
        SELECT *, {reason} AS quarantine_reason
        FROM (
            SELECT *, 'prior' AS eval_set, {parsed} FROM raw_prior
            UNION ALL
            SELECT *, 'train' AS eval_set, {parsed} FROM raw_train
        )
    )
) AS lines
LEFT JOIN known_orders ON known_orders.order_id = lines.order_id
LEFT JOIN known_products ON known_products.product_id = lines.product_id
"""

# This batch's orders quarantined as `forgotten` (a user with a forget request in force, see
# clean_orders.FORGOTTEN_SQL): their lines are quarantined for the same reason.
FORGOTTEN_ORDERS_SQL = """
CREATE OR REPLACE TEMP TABLE forgotten_orders AS
SELECT DISTINCT TRY_CAST(json_extract_string(CASE WHEN json_valid(record) THEN record END, '$.order_id') AS INTEGER)
       AS order_id
FROM read_parquet(?, hive_partitioning = false)
WHERE reason = 'forgotten'
"""

# Each raw table holds the rows of exactly one landed file (landing writes one `_source_file`).
LINE_SOURCES_SQL = """
SELECT 'prior', count(DISTINCT _source_file), any_value(_source_file) FROM raw_prior
UNION ALL
SELECT 'train', count(DISTINCT _source_file), any_value(_source_file) FROM raw_train
"""


def clean_order_products(
    conn: duckdb.DuckDBPyConnection,
    raw_prior_uri: str,
    raw_train_uri: str,
    order_uris: Sequence[str],
    products_uri: str,
    earlier_clean_uris: Sequence[str],
    scratch: StagedLocation,
    quarantined_orders_uri: str | None = None,
) -> CleanResult:
    """Clean one partition of order lines against all orders up to it and the product catalog; lines
    of this batch's orders quarantined as `forgotten` (`quarantined_orders_uri`) are too."""
    conn.read_parquet(raw_prior_uri, hive_partitioning=False).create_view("raw_prior", replace=True)
    conn.read_parquet(raw_train_uri, hive_partitioning=False).create_view("raw_train", replace=True)
    create_view(conn, "all_orders", order_uris, CLEAN_ORDERS_SCHEMA)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE known_orders AS SELECT DISTINCT order_id, eval_set FROM all_orders"
    )
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE known_products AS SELECT DISTINCT product_id FROM read_parquet(?, hive_partitioning = false)",
        [products_uri],
    )
    if quarantined_orders_uri is None:
        conn.execute("CREATE OR REPLACE TEMP TABLE forgotten_orders (order_id INTEGER)")
    else:
        conn.execute(FORGOTTEN_ORDERS_SQL, [quarantined_orders_uri])
    create_view(conn, "earlier_lines", earlier_clean_uris, CLEAN_ORDER_PRODUCTS_SCHEMA)
    source_file = _source_file_sql(conn)
    conn.execute(
        CHECK_LINES_SQL.format(
            typed=typed_columns_sql(LINE_COLUMNS),
            reason=quarantine_reason_sql(LINE_COLUMNS),
            parsed=parsed_columns_sql(LINE_COLUMNS),
            record=checked_record_sql(LINE_TEXT_COLUMNS),
        )
    )
    classify_duplicates(
        conn,
        "lines_checked",
        "earlier_lines",
        ("order_id", "product_id"),
        ("add_to_cart_order", "reordered", "eval_set"),
        "lines_classified",
        row_id=("eval_set", "_source_row"),
        as_view=True,
    )
    conn.execute(
        "CREATE OR REPLACE TEMP VIEW lines_outcomes AS "
        f"SELECT *, {source_file} AS _source_file FROM lines_classified"
    )
    clean = copy_to_parquet(
        conn,
        "SELECT order_id, product_id, add_to_cart_order, reordered, eval_set, _source_file, _ingested_at"
        " FROM lines_outcomes WHERE outcome = 'clean'",
        scratch / "clean_order_products.parquet",
    )
    quarantine = copy_to_parquet(
        conn,
        QUARANTINE_SELECT.format(
            classified="lines_outcomes", record=record_json_sql((*LINE_TEXT_COLUMNS, "eval_set"))
        ),
        scratch / "quarantined_order_products.parquet",
    )
    counts = outcome_counts(conn, "lines_classified")
    raw_rows = scalar(conn, "SELECT (SELECT count(*) FROM raw_prior) + (SELECT count(*) FROM raw_train)")
    conn.execute("DROP VIEW lines_outcomes; DROP VIEW lines_classified")
    conn.execute("DROP TABLE lines_classified_repeated; DROP TABLE lines_checked")
    accounting = RowAccounting(
        raw_rows=int(raw_rows),
        clean_rows=clean.row_count,
        quarantined_rows=quarantine.row_count,
        duplicate_rows=counts.get("duplicate", 0),
    )
    return CleanResult(clean, quarantine, accounting, counts)


def _source_file_sql(conn: duckdb.DuckDBPyConnection) -> str:
    """`_source_file` for a line, from its eval_set: each raw table is one landed file."""
    sources = {eval_set: (files, name) for eval_set, files, name in conn.execute(LINE_SOURCES_SQL).fetchall()}
    if any(files > 1 for files, _ in sources.values()):
        raise ValueError("a raw order lines partition holds rows of more than one landed file")
    prior, train = sources["prior"][1], sources["train"][1]
    return f"CASE eval_set WHEN 'prior' THEN {_literal(prior)} ELSE {_literal(train)} END"


def _literal(value: str | None) -> str:
    return "NULL::VARCHAR" if value is None else "'" + value.replace("'", "''") + "'"
