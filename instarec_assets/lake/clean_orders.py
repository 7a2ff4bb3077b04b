"""clean_orders: typed, validated, de-duplicated orders; first orders alone lack days_since_prior_order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from instarec_assets.lake.accounting import CleanResult, RowAccounting, outcome_counts
from instarec_assets.lake.dedup import classify_duplicates
from instarec_assets.lake.duck import copy_to_parquet, create_view, scalar
from instarec_assets.lake.quarantine import QUARANTINE_SELECT, checked_record_sql, record_json_sql
from instarec_assets.lake.staging import StagedLocation
from instarec_assets.lake.validation import (
    Text,
    WholeNumber,
    parsed_columns_sql,
    quarantine_reason_sql,
    typed_columns_sql,
)

MAX_ID = 2_147_483_647

ORDER_COLUMNS = (
    WholeNumber("order_id", 1, MAX_ID),
    WholeNumber("user_id", 1, MAX_ID),
    Text("eval_set", allowed=("prior", "train", "test"), lowercase=True),
    WholeNumber("order_number", 1, 10_000, sql_type="SMALLINT"),
    WholeNumber("order_dow", 0, 6, sql_type="TINYINT"),
    WholeNumber("order_hour_of_day", 0, 23, sql_type="TINYINT"),
    WholeNumber("days_since_prior_order", 0, 30, required=False, sql_type="TINYINT"),
)
ORDER_CONTENT = (
    "user_id",
    "eval_set",
    "order_number",
    "order_dow",
    "order_hour_of_day",
    "days_since_prior_order",
)

# Checked after every column parsed: the Kaggle convention that only first orders lack a gap.
ORDER_RULES = (
    "WHEN TRY_CAST(trim(order_number) AS DOUBLE) = 1 AND nullif(trim(days_since_prior_order), '') IS NOT NULL "
    "THEN 'days_since_prior_order: must be empty on a first order (order_number 1)'",
    "WHEN TRY_CAST(trim(order_number) AS DOUBLE) > 1 AND nullif(trim(days_since_prior_order), '') IS NULL "
    "THEN 'days_since_prior_order: missing on order_number ' || trim(order_number)",
)

CLEAN_ORDERS_SCHEMA = """
SELECT NULL::INTEGER AS order_id, NULL::INTEGER AS user_id, NULL::VARCHAR AS eval_set,
       NULL::SMALLINT AS order_number, NULL::TINYINT AS order_dow, NULL::TINYINT AS order_hour_of_day,
       NULL::TINYINT AS days_since_prior_order, NULL::VARCHAR AS _source_file,
       NULL::TIMESTAMPTZ AS _ingested_at
WHERE false
"""

CHECK_ORDERS_SQL = """
CREATE OR REPLACE TEMP TABLE orders_checked AS
SELECT {typed},
       _source_file, _source_row, _ingested_at, quarantine_reason,
       {record} AS _record
FROM (SELECT *, {reason} AS quarantine_reason FROM (SELECT *, {parsed} FROM raw_orders))
"""

# A user cannot have two different orders with the same order_number, in this file or before it.
USER_ORDER_NUMBER_CONFLICTS_SQL = """
UPDATE orders_classified AS o
SET outcome = 'quarantined',
    conflict_reason = 'user_id ' || o.user_id || ' already has order_number ' || o.order_number
                      || ' as another order'
FROM (
    SELECT order_id FROM (
        SELECT order_id,
               row_number() OVER (PARTITION BY user_id, order_number ORDER BY _source_row) AS rank_in_file
        FROM orders_classified WHERE outcome = 'clean'
    ) WHERE rank_in_file > 1
    UNION
    SELECT c.order_id FROM orders_classified c
    JOIN earlier_orders e ON e.user_id = c.user_id AND e.order_number = c.order_number AND e.order_id <> c.order_id
    WHERE c.outcome = 'clean'
) AS clash
WHERE o.order_id = clash.order_id AND o.outcome = 'clean'
"""


# Orders of a user with a forget request in force (instarec_assets.privacy): quarantined with reason
# `forgotten` whatever else is true of them, and their record keeps the order id but not the user id.
# The forget list holds salted hashes only; the salt is a bound parameter, never stored.
FORGOTTEN_SQL = """
UPDATE orders_classified
SET outcome = 'quarantined',
    quarantine_reason = 'forgotten',
    _record = to_json(struct_pack(order_id := order_id, user_id := '<forgotten>'))::VARCHAR
WHERE user_id IS NOT NULL
  AND sha256($salt || ':' || user_id::VARCHAR) IN (SELECT user_hash FROM forgotten_users)
"""


@dataclass(frozen=True)
class ForgetList:
    """Users whose later landings are quarantined: salted sha256 hashes of their ids, and the salt."""

    salt: str = field(default="", repr=False)
    user_hashes: frozenset[str] = frozenset()


def clean_orders(
    conn: duckdb.DuckDBPyConnection,
    raw_uri: str,
    earlier_clean_uris: Sequence[str],
    scratch: StagedLocation,
    forget_list: ForgetList | None = None,
) -> CleanResult:
    """Clean one partition of raw orders against every order stored in earlier partitions; orders of
    users on the forget list are quarantined with reason `forgotten`."""
    conn.read_parquet(raw_uri, hive_partitioning=False).create_view("raw_orders", replace=True)
    create_view(conn, "earlier_orders", earlier_clean_uris, CLEAN_ORDERS_SCHEMA)
    text_columns = tuple(column.name for column in ORDER_COLUMNS)
    conn.execute(
        CHECK_ORDERS_SQL.format(
            typed=typed_columns_sql(ORDER_COLUMNS),
            reason=quarantine_reason_sql(ORDER_COLUMNS, ORDER_RULES),
            parsed=parsed_columns_sql(ORDER_COLUMNS),
            record=checked_record_sql(text_columns),
        )
    )
    classify_duplicates(
        conn, "orders_checked", "earlier_orders", ("order_id",), ORDER_CONTENT, "orders_classified"
    )
    conn.execute(USER_ORDER_NUMBER_CONFLICTS_SQL)
    if forget_list is not None and forget_list.user_hashes:
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE forgotten_users AS SELECT unnest($hashes::VARCHAR[]) AS user_hash",
            {"hashes": sorted(forget_list.user_hashes)},
        )
        conn.execute(FORGOTTEN_SQL, {"salt": forget_list.salt})
    clean = copy_to_parquet(
        conn,
        "SELECT order_id, user_id, eval_set, order_number, order_dow, order_hour_of_day, days_since_prior_order,"
        " _source_file, _ingested_at FROM orders_classified WHERE outcome = 'clean' ORDER BY order_id",
        scratch / "clean_orders.parquet",
    )
    quarantine = copy_to_parquet(
        conn,
        QUARANTINE_SELECT.format(classified="orders_classified", record=record_json_sql(text_columns)),
        scratch / "quarantined_orders.parquet",
    )
    counts = outcome_counts(conn, "orders_classified")
    accounting = RowAccounting(
        raw_rows=int(scalar(conn, "SELECT count(*) FROM raw_orders")),
        clean_rows=clean.row_count,
        quarantined_rows=quarantine.row_count,
        duplicate_rows=counts.get("duplicate", 0),
    )
    return CleanResult(clean, quarantine, accounting, counts)
