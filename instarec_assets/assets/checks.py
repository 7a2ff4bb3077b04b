"""Asset checks on the published clean zone: schema, key uniqueness and foreign keys.

They read the lake as stored (not the step's staged files), so they also catch a partition that
was edited or replaced by hand. Blocking checks stop downstream assets in the same run.
"""

import warnings

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, asset_check
from dagster_duckdb import DuckDBResource

from instarec_assets.lake.clean_catalog import AISLES, CLEAN_PRODUCTS_SCHEMA, DEPARTMENTS
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.integrity import (
    duplicate_keys,
    orphan_rows,
    schema_differences,
)
from instarec_assets.partitions import landing_batches
from instarec_assets.resources import LakeResource, lake_connection

# Partitioned asset checks are a Dagster preview feature; the lake relies on it deliberately.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")

CLEAN_SCHEMAS = {
    "clean_orders": CLEAN_ORDERS_SCHEMA,
    "clean_order_products": CLEAN_ORDER_PRODUCTS_SCHEMA,
    "clean_products": CLEAN_PRODUCTS_SCHEMA,
    "clean_aisles": AISLES.empty_sql(),
    "clean_departments": DEPARTMENTS.empty_sql(),
}


def _upto(lake: LakeResource, table: str, partition_key: str) -> list[str]:
    """URIs of a clean table's partitions up to and including this one."""
    return [uri for key, uri in lake.locations.partitions("clean", table).items() if key <= partition_key]


def _this(lake: LakeResource, table: str, partition_key: str) -> str:
    return lake.locations.partition_uri("clean", table, partition_key)


def build_schema_check(table: str) -> AssetChecksDefinition:
    @asset_check(
        asset=table,
        name="schema",
        partitions_def=landing_batches,
        blocking=True,
        description="The stored partition has exactly the clean zone's columns and types.",
    )
    def schema_check(context: AssetCheckExecutionContext, lake: LakeResource, duckdb: DuckDBResource):
        with lake_connection(duckdb, lake) as conn:
            differences = schema_differences(
                conn, _this(lake, table, context.partition_key), CLEAN_SCHEMAS[table]
            )
        return AssetCheckResult(
            passed=not differences,
            description="; ".join(differences) or "schema matches",
            metadata={"differences": len(differences)},
        )

    return schema_check


@asset_check(
    asset="clean_orders",
    partitions_def=landing_batches,
    blocking=True,
    description="Each order_id is stored once across all partitions up to this one.",
)
def clean_orders_key_unique(context: AssetCheckExecutionContext, lake: LakeResource, duckdb: DuckDBResource):
    with lake_connection(duckdb, lake) as conn:
        duplicates = duplicate_keys(conn, _upto(lake, "clean_orders", context.partition_key), ["order_id"])
    return AssetCheckResult(passed=duplicates == 0, metadata={"duplicate_order_ids": duplicates})


@asset_check(
    asset="clean_order_products",
    partitions_def=landing_batches,
    blocking=True,
    description="(order_id, product_id) is unique; every line's order and product exist.",
)
def clean_order_products_keys(
    context: AssetCheckExecutionContext, lake: LakeResource, duckdb: DuckDBResource
):
    key = context.partition_key
    lines = _upto(lake, "clean_order_products", key)
    this_lines = [_this(lake, "clean_order_products", key)]
    with lake_connection(duckdb, lake) as conn:
        duplicates = duplicate_keys(conn, lines, ["order_id", "product_id"])
        unknown_orders = orphan_rows(
            conn, this_lines, "order_id", _upto(lake, "clean_orders", key), "order_id"
        )
        unknown_products = orphan_rows(
            conn, this_lines, "product_id", [_this(lake, "clean_products", key)], "product_id"
        )
    return AssetCheckResult(
        passed=duplicates == unknown_orders == unknown_products == 0,
        metadata={
            "duplicate_lines": duplicates,
            "lines_with_unknown_order": unknown_orders,
            "lines_with_unknown_product": unknown_products,
        },
    )


@asset_check(
    asset="clean_products",
    partitions_def=landing_batches,
    blocking=True,
    description="One current row per product; every product's aisle and department exist.",
)
def clean_products_scd2(context: AssetCheckExecutionContext, lake: LakeResource, duckdb: DuckDBResource):
    key = context.partition_key
    products = [_this(lake, "clean_products", key)]
    with lake_connection(duckdb, lake) as conn:
        several_current = duplicate_keys(conn, products, ["product_id"], where="is_current")
        unknown_aisles = orphan_rows(
            conn, products, "aisle_id", [_this(lake, "clean_aisles", key)], "aisle_id"
        )
        unknown_departments = orphan_rows(
            conn, products, "department_id", [_this(lake, "clean_departments", key)], "department_id"
        )
    return AssetCheckResult(
        passed=several_current == unknown_aisles == unknown_departments == 0,
        metadata={
            "products_with_several_current_rows": several_current,
            "rows_with_unknown_aisle": unknown_aisles,
            "rows_with_unknown_department": unknown_departments,
        },
    )


def build_dimension_key_check(table: str, key_column: str) -> AssetChecksDefinition:
    @asset_check(
        asset=table,
        name="key_unique",
        partitions_def=landing_batches,
        blocking=True,
        description=f"Each {key_column} appears once in the snapshot.",
    )
    def key_check(context: AssetCheckExecutionContext, lake: LakeResource, duckdb: DuckDBResource):
        with lake_connection(duckdb, lake) as conn:
            duplicates = duplicate_keys(conn, [_this(lake, table, context.partition_key)], [key_column])
        return AssetCheckResult(passed=duplicates == 0, metadata={f"duplicate_{key_column}s": duplicates})

    return key_check


def clean_checks() -> list[AssetChecksDefinition]:
    return [
        *(build_schema_check(table) for table in CLEAN_SCHEMAS),
        clean_orders_key_unique,
        clean_order_products_keys,
        clean_products_scd2,
        build_dimension_key_check("clean_aisles", "aisle_id"),
        build_dimension_key_check("clean_departments", "department_id"),
    ]
