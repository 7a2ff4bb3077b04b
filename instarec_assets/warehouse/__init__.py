"""The analysts' sandbox: a DuckDB warehouse built from the clean zone, and a read-only SQL runner.

Dagster-free. `build_warehouse_file` copies the clean zone as of one partition into a separate
DuckDB file (tables, the `joined_order_products` view, marts; user ids replaced by a salted hash);
`run_readonly_sql` answers one SELECT on it and refuses everything else.
"""

from instarec_assets.warehouse.build import (
    RELATIONS,
    BatchRows,
    RelationSummary,
    WarehouseSummary,
    build_warehouse,
    build_warehouse_file,
    published_as_of,
    update_warehouse,
    warehouse_path,
)
from instarec_assets.warehouse.readonly import (
    QueryRefusedError,
    QueryResult,
    WarehouseNotBuiltError,
    WarehouseQueryError,
    WarehouseUnreadableError,
    format_table,
    run_readonly_sql,
)
from instarec_assets.warehouse.salt import SALT_ENV, WarehouseSalt, WarehouseSaltError, load_salt, user_key

__all__ = [
    "RELATIONS",
    "SALT_ENV",
    "BatchRows",
    "QueryRefusedError",
    "QueryResult",
    "RelationSummary",
    "WarehouseNotBuiltError",
    "WarehouseQueryError",
    "WarehouseSalt",
    "WarehouseSaltError",
    "WarehouseSummary",
    "WarehouseUnreadableError",
    "build_warehouse",
    "build_warehouse_file",
    "format_table",
    "load_salt",
    "published_as_of",
    "run_readonly_sql",
    "update_warehouse",
    "user_key",
    "warehouse_path",
]
