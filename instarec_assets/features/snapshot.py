"""The clean zone as of one partition, exposed to the feature SQL as views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import create_view


@dataclass(frozen=True)
class CleanSnapshot:
    """URIs of the clean zone as of partition D: every orders/lines partition <= D, catalog partition D."""

    orders: Sequence[str]
    order_products: Sequence[str]
    products: str
    aisles: str
    departments: str


# Current catalog rows only: a product's aisle and department as they are now.
CATALOG_SQL = """
CREATE OR REPLACE TEMP TABLE feat_catalog AS
SELECT product_id, any_value(aisle_id) AS aisle_id, any_value(department_id) AS department_id
FROM read_parquet(?, hive_partitioning = false)
WHERE is_current
GROUP BY product_id
"""


def open_snapshot(conn: duckdb.DuckDBPyConnection, snapshot: CleanSnapshot) -> None:
    """Views `feat_clean_orders` and `feat_clean_lines` (all partitions) and table `feat_catalog`."""
    create_view(conn, "feat_clean_orders", snapshot.orders, CLEAN_ORDERS_SCHEMA)
    create_view(conn, "feat_clean_lines", snapshot.order_products, CLEAN_ORDER_PRODUCTS_SCHEMA)
    conn.execute(CATALOG_SQL, [snapshot.products])
