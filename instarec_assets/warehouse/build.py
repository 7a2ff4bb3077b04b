"""Builds the analysts' warehouse: a separate DuckDB file with a copy of the clean zone as of one partition.

Why tables, not views over the lake: the analysts' connection runs with `enable_external_access =
false` (so a query cannot read arbitrary files), and that setting also stops views from reading the
lake's parquet files; views over `s3://` would in addition need the fsspec filesystem registered in
every connection; and views would carry the salt in their stored SQL. So the clean zone is copied
into tables (user ids replaced by `user_key` while copying), `joined_order_products` is a view over
those tables, and the marts are small tables. The file is an isolated sandbox, like the seed
system's: nothing an analyst does reaches the lake.

The file is built under a temporary name beside the published one and renamed over it when
complete, so a reader never sees a half-built database. A build for a partition older than the one
already published leaves the newer warehouse in place (a backfill never turns the clock back).

After the first batch the build is an update: a copy of the previous batch's warehouse gets this
batch's orders, lines and quarantined rows appended (they are row-wise functions of their batch),
the catalog tables and the SCD2 dimension replaced, the view redefined, and the marts brought up to
date from the lines of the orders the batch touches (see TOUCHED_BEFORE_SQL), not re-aggregated
over every line. It falls back to a full build when the published warehouse is not the
previous batch's, was built by other relation SQL or another salt (`warehouse_info.layout`,
`salt_check`), or when asked.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import DUCKDB_SETTINGS, attach_filesystem, scalar
from instarec_assets.warehouse.readonly import open_readonly
from instarec_assets.warehouse.salt import USER_KEY_HEX_DIGITS

WAREHOUSE_DIR = "warehouse"
WAREHOUSE_FILE = "analyst.duckdb"

# Products need this many orders before they get a rank by reorder rate (fewer is noise).
MIN_ORDERS_FOR_REORDER_RANK = 10


def warehouse_path(home: Path) -> Path:
    """Where the published warehouse lives: INSTAREC_HOME/warehouse/analyst.duckdb."""
    return Path(home).resolve() / WAREHOUSE_DIR / WAREHOUSE_FILE


@dataclass(frozen=True)
class Relation:
    """One table or view of the warehouse: how it is made and what it means."""

    name: str
    kind: str  # "table" or "view"
    comment: str
    select_sql: str
    # Row-wise over one batch's rows: an update appends the batch's rows instead of rebuilding.
    appends: bool = False
    # How an update brings the previous table to the new one from the touched orders' lines (see
    # TOUCHED_BEFORE_SQL); empty: rebuilt from select_sql.
    update_sql: str = ""
    # How its rows are counted when count(*) would be a scan of the order lines (a view).
    rows_sql: str = ""


USER_KEY_SQL = f"left(sha256($salt || ':' || user_id::VARCHAR), {USER_KEY_HEX_DIGITS})"

# The marts aggregate the narrow tables first and add names last: at the full dataset's size
# (34M lines) that is about twice as fast as grouping the wide joined view.
TOP_PRODUCTS_RANKED = """
SELECT row_number() OVER (ORDER BY orders DESC, per_product.product_id) AS rank_by_orders,
       CASE WHEN orders >= $min_orders THEN
            row_number() OVER (
                PARTITION BY orders >= $min_orders
                ORDER BY reorder_rate DESC, orders DESC, per_product.product_id)
       END AS rank_by_reorder_rate,
       per_product.product_id, products.product_name, aisles.aisle, departments.department,
       orders, reorders, reorder_rate, users
FROM (SELECT *, reorders / orders AS reorder_rate FROM per_product) AS per_product
LEFT JOIN products ON products.product_id = per_product.product_id
LEFT JOIN aisles ON aisles.aisle_id = products.aisle_id
LEFT JOIN departments ON departments.department_id = products.department_id
ORDER BY rank_by_orders
"""

DEPARTMENT_HOUR_NAMED = """
SELECT per_cell.department_id, departments.department, order_hour_of_day, order_lines, reorders,
       reorders / order_lines AS reorder_rate, orders
FROM per_cell LEFT JOIN departments ON departments.department_id = per_cell.department_id
ORDER BY per_cell.department_id, order_hour_of_day
"""

RELATIONS: tuple[Relation, ...] = (
    Relation(
        "aisles",
        "table",
        "Aisles as of the partition (latest name wins).",
        "SELECT aisle_id, aisle FROM src_aisles ORDER BY aisle_id",
    ),
    Relation(
        "departments",
        "table",
        "Departments as of the partition (latest name wins).",
        "SELECT department_id, department FROM src_departments ORDER BY department_id",
    ),
    Relation(
        "products",
        "table",
        "Current rows of the products dimension (SCD type 2): each product's name, aisle and department now.",
        """
        SELECT product_id, product_name, aisle_id, department_id, valid_from
        FROM src_products WHERE is_current ORDER BY product_id
        """,
    ),
    Relation(
        "product_history",
        "table",
        "Every version of every product (SCD type 2): valid_from, valid_to (exclusive), is_current.",
        """
        SELECT product_id, product_name, aisle_id, department_id, valid_from, valid_to, is_current
        FROM src_products ORDER BY product_id, valid_from
        """,
    ),
    Relation(
        "orders",
        "table",
        "Orders of every partition up to the warehouse's date; user_key is a salted hash of the user id.",
        f"""
        SELECT order_id, {USER_KEY_SQL} AS user_key, eval_set, order_number, order_dow,
               order_hour_of_day, days_since_prior_order
        FROM src_orders ORDER BY order_id
        """,
        appends=True,
    ),
    Relation(
        "order_products",
        "table",
        "Order lines (prior and train) of every partition up to the warehouse's date.",
        """
        SELECT order_id, product_id, add_to_cart_order, reordered, eval_set
        FROM src_order_products ORDER BY order_id, add_to_cart_order
        """,
        appends=True,
    ),
    Relation(
        "joined_order_products",
        "view",
        "Order lines with their order, current product, aisle and department (the seed's Athena view).",
        """
        SELECT line.order_id, orders.user_key, line.eval_set, orders.order_number, orders.order_dow,
               orders.order_hour_of_day, orders.days_since_prior_order, line.add_to_cart_order,
               line.reordered, line.product_id, products.product_name, products.aisle_id, aisles.aisle,
               products.department_id, departments.department
        FROM order_products AS line
        JOIN orders ON orders.order_id = line.order_id
        LEFT JOIN products ON products.product_id = line.product_id
        LEFT JOIN aisles ON aisles.aisle_id = products.aisle_id
        LEFT JOIN departments ON departments.department_id = products.department_id
        """,
        # Every line that joins its order is one order of its product, so the count is the mart's sum.
        rows_sql="SELECT coalesce(sum(orders), 0) FROM mart_top_products",
    ),
    Relation(
        "quarantine",
        "table",
        "Rows the clean step could not accept, from every batch up to the warehouse's date: the table, "
        "batch, landing file name and row, the reason, and the row as landed, with user ids masked "
        "(user_key in a JSON record, <masked> in a raw line or a reason's value).",
        f"""
        WITH landed AS (
            SELECT *,
                   CASE WHEN json_valid(record) THEN json_extract_string(record, '$.user_id') END
                       AS user_id
            FROM src_quarantine
        )
        SELECT source_table, batch, regexp_replace(source_file, '^.*/', '') AS source_file,
               source_row,
               CASE WHEN reason LIKE 'user_id%' THEN regexp_replace(reason, '''.*''$', '''<masked>''')
                    ELSE reason END AS reason,
               CASE WHEN source_table <> 'orders' THEN record
                    WHEN json_valid(record) AND user_id IS NOT NULL
                        THEN json_merge_patch(record, json_object('user_id', {USER_KEY_SQL}))::VARCHAR
                    WHEN json_valid(record) THEN record
                    ELSE regexp_replace(record, '^([^,]*),[^,]*', '\\1,<masked>') END AS record
        FROM landed
        ORDER BY source_table, batch, source_file, source_row
        """,
        appends=True,
    ),
    Relation(
        "mart_top_products",
        "table",
        "Every ordered product ranked by orders; rank by reorder rate among products with at least "
        "warehouse_info.min_orders_for_reorder_rank orders.",
        """
        WITH per_product AS (
            SELECT line.product_id, count(*) AS orders, count(*) FILTER (WHERE line.reordered = 1) AS reorders,
                   count(DISTINCT orders.user_key) AS users
            FROM order_products AS line JOIN orders ON orders.order_id = line.order_id
            GROUP BY line.product_id
        )
        """
        + TOP_PRODUCTS_RANKED,
        update_sql="""
        WITH line_change AS (
            SELECT product_id, sum(sign) AS orders, sum(sign) FILTER (WHERE reordered = 1) AS reorders
            FROM touched_lines GROUP BY product_id
        ),
        new_buyers AS (
            SELECT product_id, count(*) AS users
            FROM (SELECT DISTINCT user_key, product_id FROM touched_lines WHERE sign = 1
                  EXCEPT SELECT user_key, product_id FROM touched_user_products)
            GROUP BY product_id
        ),
        per_product AS (
            SELECT product_id,
                   (coalesce(previous.orders, 0) + coalesce(line_change.orders, 0))::BIGINT AS orders,
                   (coalesce(previous.reorders, 0) + coalesce(line_change.reorders, 0))::BIGINT AS reorders,
                   (coalesce(previous.users, 0) + coalesce(new_buyers.users, 0))::BIGINT AS users
            FROM (SELECT product_id, orders, reorders, users FROM mart_top_products) AS previous
            FULL JOIN line_change USING (product_id)
            FULL JOIN new_buyers USING (product_id)
        )
        """
        + TOP_PRODUCTS_RANKED,
    ),
    Relation(
        "mart_reorder_rate_by_department_hour",
        "table",
        "Order lines, reorders, reorder rate and orders per department and hour of day of the order.",
        """
        WITH per_cell AS (
            SELECT products.department_id, orders.order_hour_of_day, count(*) AS order_lines,
                   count(*) FILTER (WHERE line.reordered = 1) AS reorders, count(DISTINCT line.order_id) AS orders
            FROM order_products AS line
            JOIN orders ON orders.order_id = line.order_id
            LEFT JOIN products ON products.product_id = line.product_id
            GROUP BY products.department_id, orders.order_hour_of_day
        )
        """
        + DEPARTMENT_HOUR_NAMED,
        # A line's department is its product's current one, so the previous cells hold only while no
        # product that has lines moved (then it is rebuilt, see DEPARTMENTS_MOVED_SQL).
        update_sql="""
        WITH change AS (
            SELECT department_id, order_hour_of_day, sum(sign) AS order_lines,
                   sum(sign) FILTER (WHERE reordered = 1) AS reorders, 0 AS orders
            FROM touched_lines GROUP BY ALL
            UNION ALL
            SELECT department_id, order_hour_of_day, 0, 0, sum(sign)
            FROM (SELECT DISTINCT department_id, order_hour_of_day, order_id, sign FROM touched_lines)
            GROUP BY ALL
            UNION ALL
            SELECT department_id, order_hour_of_day, order_lines, reorders, orders
            FROM mart_reorder_rate_by_department_hour
        ),
        per_cell AS (
            SELECT department_id, order_hour_of_day, sum(order_lines)::BIGINT AS order_lines,
                   coalesce(sum(reorders), 0)::BIGINT AS reorders, sum(orders)::BIGINT AS orders
            FROM change GROUP BY ALL HAVING sum(order_lines) <> 0
        )
        """
        + DEPARTMENT_HOUR_NAMED,
    ),
    Relation(
        "mart_reorder_rate_by_department",
        "table",
        "Order lines, reorders, reorder rate (share of lines with reordered = 1) and orders per department.",
        # An order has one hour, so its department's orders add up exactly over the hours.
        """
        SELECT department_id, any_value(department) AS department, sum(order_lines)::BIGINT AS order_lines,
               sum(reorders)::BIGINT AS reorders, sum(reorders) / sum(order_lines) AS reorder_rate,
               sum(orders)::BIGINT AS orders
        FROM mart_reorder_rate_by_department_hour GROUP BY department_id ORDER BY department_id
        """,
    ),
    Relation(
        "mart_reorder_rate_by_hour",
        "table",
        "Order lines, reorders, reorder rate and orders (with known lines) per hour of day of the order.",
        """
        WITH per_order AS (
            SELECT order_id, count(*) AS order_lines, count(*) FILTER (WHERE reordered = 1) AS reorders
            FROM order_products GROUP BY order_id
        )
        SELECT orders.order_hour_of_day, sum(order_lines)::BIGINT AS order_lines,
               sum(reorders)::BIGINT AS reorders, sum(reorders) / sum(order_lines) AS reorder_rate,
               count(*) AS orders
        FROM per_order JOIN orders ON orders.order_id = per_order.order_id
        GROUP BY orders.order_hour_of_day ORDER BY orders.order_hour_of_day
        """,
        update_sql="""
        WITH change AS (
            SELECT order_hour_of_day, sum(sign) AS order_lines, sum(sign) FILTER (WHERE reordered = 1) AS reorders,
                   count(DISTINCT order_id) FILTER (WHERE sign = 1)
                     - count(DISTINCT order_id) FILTER (WHERE sign = -1) AS orders
            FROM touched_lines GROUP BY ALL
            UNION ALL
            SELECT order_hour_of_day, order_lines, reorders, orders FROM mart_reorder_rate_by_hour
        )
        SELECT order_hour_of_day, sum(order_lines)::BIGINT AS order_lines, sum(reorders)::BIGINT AS reorders,
               sum(reorders) / sum(order_lines) AS reorder_rate, sum(orders)::BIGINT AS orders
        FROM change GROUP BY ALL HAVING sum(orders) > 0 ORDER BY order_hour_of_day
        """,
    ),
    Relation(
        "mart_basket_size_distribution",
        "table",
        "How many orders have each basket size (lines per order, orders with known lines only).",
        """
        WITH baskets AS (SELECT order_id, count(*) AS basket_size FROM order_products GROUP BY order_id)
        SELECT basket_size, count(*) AS orders, count(*) / sum(count(*)) OVER () AS share_of_orders
        FROM baskets GROUP BY basket_size ORDER BY basket_size
        """,
        # Every line counts here, joined to its order or not: the touched orders' sizes before and after.
        update_sql="""
        WITH before AS (SELECT order_id, count(*) AS basket_size FROM touched_old_lines GROUP BY order_id),
        after AS (
            SELECT order_id, count(*) AS basket_size
            FROM (SELECT order_id FROM touched_old_lines UNION ALL SELECT order_id FROM src_order_products)
            GROUP BY order_id
        ),
        change AS (
            SELECT basket_size, -count(*) AS orders FROM before GROUP BY ALL
            UNION ALL
            SELECT basket_size, count(*) FROM after GROUP BY ALL
            UNION ALL
            SELECT basket_size, orders FROM mart_basket_size_distribution
        ),
        baskets AS (
            SELECT basket_size, sum(orders)::BIGINT AS orders FROM change GROUP BY ALL HAVING sum(orders) > 0
        )
        SELECT basket_size, orders, orders / sum(orders) OVER () AS share_of_orders
        FROM baskets ORDER BY basket_size
        """,
    ),
)

# An update's marts (those with `update_sql`): the orders the batch touches are its lines' orders and
# its own orders. `touched_lines` holds their lines before the append (sign -1: the previous
# warehouse's lines joined to its orders and products) and after it (sign +1: those lines and the
# batch's, joined to the new tables), so a mart is the previous one plus the signed sums: exact for
# counts and, per product, for distinct users, counted against `touched_user_products` (every
# (user_key, product_id) the touched orders' users had before the append).
TOUCHED_BEFORE_SQL = (
    """
    CREATE OR REPLACE TEMP TABLE touched_orders AS
    SELECT order_id FROM src_order_products UNION SELECT order_id FROM src_orders
    """,
    """
    CREATE OR REPLACE TEMP TABLE touched_old_lines AS
    SELECT order_id, product_id, reordered FROM order_products
    WHERE order_id IN (SELECT order_id FROM touched_orders)
    """,
    """
    CREATE OR REPLACE TEMP TABLE touched_lines AS
    SELECT line.order_id, line.product_id, line.reordered, orders.user_key, orders.order_hour_of_day,
           products.department_id, -1 AS sign
    FROM touched_old_lines AS line
    JOIN orders ON orders.order_id = line.order_id
    LEFT JOIN products ON products.product_id = line.product_id
    """,
    f"""
    CREATE OR REPLACE TEMP TABLE touched_user_products AS
    SELECT DISTINCT orders.user_key, line.product_id
    FROM order_products AS line JOIN orders ON orders.order_id = line.order_id
    WHERE orders.user_key IN (
        SELECT user_key FROM orders WHERE order_id IN (SELECT order_id FROM touched_orders)
        UNION SELECT {USER_KEY_SQL} FROM src_orders
    )
    """,
)
TOUCHED_AFTER_SQL = """
INSERT INTO touched_lines
SELECT line.order_id, line.product_id, line.reordered, orders.user_key, orders.order_hour_of_day,
       products.department_id, 1 AS sign
FROM (SELECT order_id, product_id, reordered FROM touched_old_lines
      UNION ALL SELECT order_id, product_id, reordered FROM src_order_products) AS line
JOIN orders ON orders.order_id = line.order_id
LEFT JOIN products ON products.product_id = line.product_id
"""
TOUCHED_TABLES = ("touched_orders", "touched_old_lines", "touched_lines", "touched_user_products")

# Whether a product that has lines changed department (or left or joined the current catalog) with
# this batch's catalog: then the department marts' previous cells are stale and they are rebuilt.
DEPARTMENTS_MOVED_SQL = """
WITH previous AS (SELECT product_id, department_id FROM products),
     current AS (SELECT product_id, department_id FROM src_products WHERE is_current),
     moved AS ((FROM previous EXCEPT FROM current) UNION ALL (FROM current EXCEPT FROM previous))
SELECT EXISTS (SELECT 1 FROM order_products WHERE product_id IN (SELECT product_id FROM moved))
"""
DEPARTMENT_MARTS = ("mart_reorder_rate_by_department_hour",)

# `salt_check` is a user_key of no user: it tells an update whether the previous build used this salt,
# and tells an analyst nothing a real user_key does not.
WAREHOUSE_INFO_SQL = f"""
CREATE OR REPLACE TABLE warehouse_info AS
SELECT $as_of::DATE AS as_of, $built_at::TIMESTAMPTZ AS built_at,
       $order_partitions::INTEGER AS order_partitions, $min_orders::INTEGER AS min_orders_for_reorder_rank,
       $mode::VARCHAR AS build_mode, $layout::VARCHAR AS layout,
       {USER_KEY_SQL.replace("user_id::VARCHAR", "'salt-check'")} AS salt_check
"""
WAREHOUSE_INFO_COMMENT = "The partition this warehouse is a snapshot of, and when and how it was built."


def _layout_digest() -> str:
    """12 hex digits over the relations' SQL: an update only extends a warehouse built by the same SQL."""
    digest = hashlib.sha256()
    for relation in RELATIONS:
        digest.update(f"{relation.name}\0{relation.kind}\0{relation.select_sql}\0".encode())
    digest.update(WAREHOUSE_INFO_SQL.encode())
    return digest.hexdigest()[:12]


LAYOUT = _layout_digest()

PREVIEW_RELATION = "mart_top_products"
PREVIEW_ROWS = 10


@dataclass(frozen=True)
class RelationSummary:
    name: str
    kind: str
    rows: int
    built: str = "rebuilt"  # or, by an update: "appended" (the batch's rows), "updated" (update_sql)


@dataclass(frozen=True)
class BatchRows:
    """One batch's own files, and the batch whose warehouse an update appends them to."""

    previous: str
    orders: Sequence[str]
    order_products: Sequence[str]
    quarantine: Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class WarehouseSummary:
    """What a build produced; `published` is false when a newer warehouse was kept in place.

    `mode` is "full" or "incremental"; `full_reason` says why a build was full.
    """

    path: Path
    as_of: str
    published: bool
    relations: tuple[RelationSummary, ...] = ()
    preview_columns: tuple[str, ...] = ()
    preview_rows: tuple[tuple, ...] = ()
    kept_as_of: str | None = None
    seconds: float = 0.0
    mode: str = "full"
    full_reason: str = ""

    def rows(self, name: str) -> int:
        return next(relation.rows for relation in self.relations if relation.name == name)


SOURCE_VIEWS = ("src_orders", "src_order_products", "src_products", "src_aisles", "src_departments")


def build_warehouse(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    salt: str,
    as_of: str,
    min_orders_for_reorder_rank: int = MIN_ORDERS_FOR_REORDER_RANK,
    quarantine: Mapping[str, Sequence[str]] | None = None,
) -> tuple[RelationSummary, ...]:
    """Fill an empty database (the connection's) with the warehouse's tables, views and marts.

    The salt is bound as a parameter of the `CREATE TABLE orders AS ...` statement: DuckDB stores a
    table's rows, not the statement that made it, so the salt never reaches the file.
    """
    _source_views(conn, snapshot, snapshot.orders, snapshot.order_products, quarantine or {})
    return _fill(conn, snapshot, salt, as_of, min_orders_for_reorder_rank, append=False)


def update_warehouse(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    batch: BatchRows,
    salt: str,
    as_of: str,
    min_orders_for_reorder_rank: int = MIN_ORDERS_FOR_REORDER_RANK,
) -> tuple[RelationSummary, ...]:
    """Bring the previous batch's warehouse (the connection's) to `as_of`: append the batch's rows,
    replace the catalog, rebuild the views and marts; the same tables a full build makes."""
    _source_views(conn, snapshot, batch.orders, batch.order_products, batch.quarantine)
    return _fill(conn, snapshot, salt, as_of, min_orders_for_reorder_rank, append=True)


def _fill(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    salt: str,
    as_of: str,
    min_orders: int,
    *,
    append: bool,
) -> tuple[RelationSummary, ...]:
    params = {
        "salt": salt,
        "min_orders": min_orders,
        "as_of": as_of,
        "built_at": dt.datetime.now(dt.UTC),
        "order_partitions": len(snapshot.orders),
        "mode": "incremental" if append else "full",
        "layout": LAYOUT,
    }
    updated_in_place: set[str] = set()
    if append:
        for statement in TOUCHED_BEFORE_SQL:
            _execute(conn, statement, params)
        moved = bool(scalar(conn, DEPARTMENTS_MOVED_SQL))
        updated_in_place = {
            relation.name
            for relation in RELATIONS
            if relation.update_sql and not (moved and relation.name in DEPARTMENT_MARTS)
        }
    touched_after = False
    for relation in RELATIONS:
        kind = relation.kind.upper()
        if append and relation.appends:
            _execute(conn, f"INSERT INTO {relation.name} {relation.select_sql}", params)
            continue
        select_sql = relation.select_sql
        if relation.name in updated_in_place:
            if not touched_after:
                conn.execute(TOUCHED_AFTER_SQL)
                touched_after = True
            select_sql = relation.update_sql
        _execute(conn, f"CREATE OR REPLACE {kind} {relation.name} AS {select_sql}", params)
        conn.execute(f"COMMENT ON {kind} {relation.name} IS {_literal(relation.comment)}")
    summaries = tuple(
        RelationSummary(
            relation.name,
            relation.kind,
            int(scalar(conn, relation.rows_sql or f"SELECT count(*) FROM {relation.name}")),
            "appended"
            if append and relation.appends
            else "updated"
            if relation.name in updated_in_place
            else "rebuilt",
        )
        for relation in RELATIONS
    )
    _execute(conn, WAREHOUSE_INFO_SQL, params)
    conn.execute(f"COMMENT ON TABLE warehouse_info IS {_literal(WAREHOUSE_INFO_COMMENT)}")
    for name in (*SOURCE_VIEWS, "src_quarantine"):
        conn.execute(f"DROP VIEW {name}")
    for name in TOUCHED_TABLES if append else ():
        conn.execute(f"DROP TABLE {name}")
    return summaries


def _source_views(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    orders: Sequence[str],
    order_products: Sequence[str],
    quarantine: Mapping[str, Sequence[str]],
) -> None:
    """TEMP views of what the relations read: these orders, lines and quarantined rows, the catalog."""
    _source_view(conn, "src_orders", orders, CLEAN_ORDERS_SCHEMA)
    _source_view(conn, "src_order_products", order_products, CLEAN_ORDER_PRODUCTS_SCHEMA)
    _source_view(conn, "src_products", [snapshot.products])
    _source_view(conn, "src_aisles", [snapshot.aisles])
    _source_view(conn, "src_departments", [snapshot.departments])
    _quarantine_view(conn, quarantine)


Connect = Callable[[Path], AbstractContextManager[duckdb.DuckDBPyConnection]]


def build_warehouse_file(
    db_path: Path,
    snapshot: CleanSnapshot,
    salt: str,
    as_of: str,
    *,
    connect: Connect | None = None,
    filesystem=None,
    min_orders_for_reorder_rank: int = MIN_ORDERS_FOR_REORDER_RANK,
    quarantine: Mapping[str, Sequence[str]] | None = None,
    batch: BatchRows | None = None,
    full_reason: str = "",
) -> WarehouseSummary:
    """Build the warehouse into a temporary file and rename it over `db_path` unless that one is newer.

    With `batch` (this batch's own files) the build updates a copy of the published warehouse when
    that one is the previous batch's and compatible (see `update_blocker`), else it is full.
    `connect` opens a read-write connection to a new database file (the Dagster asset passes its
    DuckDBResource); `filesystem` is the lake's fsspec filesystem, for `s3://` snapshots.
    """
    started = time.perf_counter()
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    kept = published_as_of(db_path)
    if kept is not None and kept > as_of:
        return WarehouseSummary(db_path, as_of, published=False, kept_as_of=kept)
    if not full_reason:
        full_reason = (
            "first batch"
            if batch is None
            else update_blocker(db_path, batch, salt, min_orders_for_reorder_rank) or ""
        )
    staging = db_path.with_name(f".{db_path.name}.{uuid.uuid4().hex}.building")
    try:
        if not full_reason:
            shutil.copyfile(db_path, staging)
        with (connect or _connect)(staging) as conn:
            attach_filesystem(conn, filesystem)
            if full_reason:
                relations = build_warehouse(
                    conn, snapshot, salt, as_of, min_orders_for_reorder_rank, quarantine=quarantine
                )
            else:
                assert batch is not None
                relations = update_warehouse(conn, snapshot, batch, salt, as_of, min_orders_for_reorder_rank)
            preview = conn.execute(f"SELECT * FROM {PREVIEW_RELATION} LIMIT {PREVIEW_ROWS}")
            preview_columns = tuple(column[0] for column in preview.description)
            preview_rows = tuple(preview.fetchall())
            conn.execute("CHECKPOINT")
        with _publish_lock(db_path):
            kept = published_as_of(db_path)
            if kept is not None and kept > as_of:
                return WarehouseSummary(db_path, as_of, published=False, kept_as_of=kept)
            _wal(db_path).unlink(missing_ok=True)
            os.replace(staging, db_path)
    finally:
        staging.unlink(missing_ok=True)
        _wal(staging).unlink(missing_ok=True)
    return WarehouseSummary(
        db_path,
        as_of,
        published=True,
        relations=relations,
        preview_columns=preview_columns,
        preview_rows=preview_rows,
        seconds=time.perf_counter() - started,
        mode="full" if full_reason else "incremental",
        full_reason=full_reason,
    )


def update_blocker(db_path: Path, batch: BatchRows, salt: str, min_orders: int) -> str | None:
    """Why the published warehouse cannot be updated with `batch` (a full build's reason), or None."""
    if not Path(db_path).exists():
        return "no published warehouse"
    try:
        with open_readonly(Path(db_path)) as conn:
            info = conn.execute(
                "SELECT max(as_of)::VARCHAR, any_value(layout), any_value(salt_check), "
                "any_value(min_orders_for_reorder_rank) FROM warehouse_info"
            ).fetchall()[0]
    except duckdb.ConnectionException:
        raise
    except duckdb.Error:
        return "the published warehouse predates incremental updates"
    as_of, layout, salt_check, kept_min_orders = info
    if as_of != batch.previous:
        return f"the published warehouse is as of {as_of}, not the previous batch {batch.previous}"
    if layout != LAYOUT:
        return "the published warehouse was built by other relation SQL"
    if salt_check != _salt_check(salt):
        return "the published warehouse was built with another salt"
    if kept_min_orders != min_orders:
        return "the published warehouse ranks reorder rates with another minimum of orders"
    return None


def _salt_check(salt: str) -> str:
    """The `warehouse_info.salt_check` a build with `salt` writes (the SQL's user_key of 'salt-check')."""
    return hashlib.sha256(f"{salt}:salt-check".encode()).hexdigest()[:USER_KEY_HEX_DIGITS]


def published_as_of(db_path: Path) -> str | None:
    """The partition the published warehouse holds, or None when there is none (or it is unreadable).

    A connection error (this process holds the file open with other settings) is raised, not taken
    for "no warehouse", so it can never let an older build replace a newer one.
    """
    if not Path(db_path).exists():
        return None
    try:
        with open_readonly(Path(db_path)) as conn:
            value = scalar(conn, "SELECT max(as_of) FROM warehouse_info")
    except duckdb.ConnectionException:
        raise
    except duckdb.Error:
        return None
    return value.isoformat() if value is not None else None


def _execute(conn: duckdb.DuckDBPyConnection, sql: str, params: dict) -> None:
    """Run `sql` with the named parameters it uses (DuckDB refuses values it does not use)."""
    used = {name: value for name, value in params.items() if f"${name}" in sql}
    if used:
        conn.execute(sql, used)
    else:
        conn.execute(sql)


def _quarantine_view(conn: duckdb.DuckDBPyConnection, quarantine: Mapping[str, Sequence[str]]) -> None:
    """A TEMP view over every batch's quarantine files, one row per quarantined row with its table."""
    batch_sql = r"regexp_replace(filename, '.*year=(\d+)/month=(\d+)/day=(\d+)/.*', '\1-\2-\3')"
    selects = [
        f"SELECT {_literal(table)} AS source_table, {batch_sql} AS batch, source_file, source_row, "
        f"reason, record FROM read_parquet([{', '.join(_literal(uri) for uri in uris)}], "
        "filename = true, hive_partitioning = false)"
        for table, uris in sorted(quarantine.items())
        if uris
    ]
    body = " UNION ALL ".join(selects) or (
        "SELECT NULL::VARCHAR AS source_table, NULL::VARCHAR AS batch, NULL::VARCHAR AS source_file, "
        "NULL::BIGINT AS source_row, NULL::VARCHAR AS reason, NULL::VARCHAR AS record WHERE false"
    )
    conn.execute(f"CREATE OR REPLACE TEMP VIEW src_quarantine AS {body}")


def _source_view(
    conn: duckdb.DuckDBPyConnection, name: str, uris: Sequence[str], empty_select: str | None = None
) -> None:
    """A TEMP view (never stored in the warehouse) over clean parquet files, or typed and empty."""
    if uris:
        files = ", ".join(_literal(uri) for uri in uris)
        body = f"SELECT * FROM read_parquet([{files}], hive_partitioning = false)"
    else:
        assert empty_select is not None, name
        body = empty_select
    conn.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {body}")


@contextmanager
def _connect(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = duckdb.connect(str(path), config=dict(DUCKDB_SETTINGS))
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _publish_lock(db_path: Path) -> Iterator[None]:
    """One publisher at a time, so two builds cannot both pass the "is it newer" check and race."""
    with open(db_path.with_name(f".{db_path.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _literal(text: str) -> str:
    """A SQL string literal of our own text (lake URIs, comments); quotes doubled."""
    return "'" + text.replace("'", "''") + "'"
