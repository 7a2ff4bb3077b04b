"""Asset checks on the published clean zone: schema, key uniqueness and foreign keys.

They read the lake as stored (not the step's staged files), through the IO manager like any input,
so they also catch a partition that was edited or replaced by hand. Blocking checks stop downstream
assets in the same run.
"""

import warnings

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, AssetIn, asset_check
from dagster_duckdb import DuckDBResource

from instarec_assets.history import own_earlier_partitions
from instarec_assets.lake.clean_catalog import AISLES, CLEAN_PRODUCTS_SCHEMA, DEPARTMENTS
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.integrity import (
    duplicate_keys,
    duplicate_keys_brought,
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


def _earlier(context: AssetCheckExecutionContext, lake: LakeResource, table: str) -> list[str]:
    """The checked table in every earlier batch (see assets/clean.py: a table's own past)."""
    locations = lake.locations
    run = context.op_execution_context
    return list(
        own_earlier_partitions(
            table,
            context.partition_key,
            run.instance,
            run.run_id,
            lambda key: locations.partition_uri("clean", table, key),
            lambda uri: locations.filesystem.exists(uri),
            lake.history_wait,
        ).values()
    )


def build_schema_check(table: str) -> AssetChecksDefinition:
    @asset_check(
        asset=table,
        name="schema",
        partitions_def=landing_batches,
        blocking=True,
        description="The stored partition has exactly the clean zone's columns and types.",
    )
    def schema_check(
        context: AssetCheckExecutionContext, lake: LakeResource, duckdb: DuckDBResource, stored: str
    ):
        with lake_connection(duckdb, lake) as conn:
            differences = schema_differences(conn, stored, CLEAN_SCHEMAS[table])
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
def clean_orders_key_unique(
    context: AssetCheckExecutionContext, lake: LakeResource, duckdb: DuckDBResource, clean_orders: str
):
    orders = [*_earlier(context, lake, "clean_orders"), clean_orders]
    with lake_connection(duckdb, lake) as conn:
        duplicates = duplicate_keys(conn, orders, ["order_id"])
    return AssetCheckResult(passed=duplicates == 0, metadata={"duplicate_order_ids": duplicates})


@asset_check(
    asset="clean_order_products",
    partitions_def=landing_batches,
    blocking=True,
    description=(
        "The batch's lines bring no repeated (order_id, product_id), within the batch or with a stored "
        "line (earlier batches were checked as they landed); every line's order and product exist."
    ),
    # Asset checks load each input for the check's own partition only (no partition mappings), so the
    # earlier batches of both tables are read from the registered batches, as the clean step does.
    additional_ins={"clean_orders": AssetIn("clean_orders"), "clean_products": AssetIn("clean_products")},
)
def clean_order_products_keys(
    context: AssetCheckExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    clean_order_products: str,
    clean_orders: str,
    clean_products: str,
):
    earlier_lines = _earlier(context, lake, "clean_order_products")
    this_lines = [clean_order_products]
    with lake_connection(duckdb, lake) as conn:
        duplicates = duplicate_keys_brought(conn, this_lines, earlier_lines, ["order_id", "product_id"])
        orders = [*_earlier(context, lake, "clean_orders"), clean_orders]
        unknown_orders = orphan_rows(conn, this_lines, "order_id", orders, "order_id")
        unknown_products = orphan_rows(conn, this_lines, "product_id", [clean_products], "product_id")
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
    additional_ins={
        "clean_aisles": AssetIn("clean_aisles"),
        "clean_departments": AssetIn("clean_departments"),
    },
)
def clean_products_scd2(
    lake: LakeResource, duckdb: DuckDBResource, clean_products: str, clean_aisles: str, clean_departments: str
):
    products = [clean_products]
    with lake_connection(duckdb, lake) as conn:
        several_current = duplicate_keys(conn, products, ["product_id"], where="is_current")
        unknown_aisles = orphan_rows(conn, products, "aisle_id", [clean_aisles], "aisle_id")
        unknown_departments = orphan_rows(
            conn, products, "department_id", [clean_departments], "department_id"
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
    def key_check(lake: LakeResource, duckdb: DuckDBResource, stored: str):
        with lake_connection(duckdb, lake) as conn:
            duplicates = duplicate_keys(conn, [stored], [key_column])
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
