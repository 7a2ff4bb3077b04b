"""Clean zone: typed, validated, de-duplicated tables, each with its quarantine table beside it.

Every clean asset yields a blocking `row_accounting` check: raw rows = clean + quarantined +
duplicates for its partition, so nothing downstream runs on a partition that lost rows.
"""

from collections.abc import Iterator

import duckdb
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    AssetsDefinition,
    Output,
    multi_asset,
)
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.metadata import accounting_metadata, preview, quarantine_reasons
from instarec_assets.lake.accounting import CleanResult
from instarec_assets.lake.clean_catalog import AISLES, DEPARTMENTS, Dimension, clean_dimension, clean_products
from instarec_assets.lake.clean_order_products import clean_order_products
from instarec_assets.lake.clean_orders import clean_orders
from instarec_assets.lake.locations import parse_partition_key
from instarec_assets.partitions import landing_date_partitions
from instarec_assets.resources import LakeResource, lake_connection

ROW_ACCOUNTING_CHECK = "row_accounting"


def _outs(table: str, description: str, kinds: set[str]) -> dict[str, AssetOut]:
    return {
        f"clean_{table}": AssetOut(
            io_manager_key="clean_io_manager", kinds=kinds, description=description, group_name="clean"
        ),
        f"quarantined_{table}": AssetOut(
            io_manager_key="clean_io_manager",
            kinds=kinds,
            description=f"Rows of raw {table} that could not be cleaned, each with a reason and the row as landed.",
            group_name="clean",
        ),
    }


def _check_spec(table: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            ROW_ACCOUNTING_CHECK,
            asset=f"clean_{table}",
            blocking=True,
            description="raw rows = clean + quarantined + duplicates for this partition (nothing dropped silently)",
        )
    ]


def _emit(table: str, result: CleanResult, conn: duckdb.DuckDBPyConnection) -> Iterator:
    """The clean table, its quarantine, and the row accounting check, with their metadata."""
    accounting = accounting_metadata(result.accounting)
    yield Output(
        result.clean,
        output_name=f"clean_{table}",
        metadata={**accounting, "preview": preview(conn, str(result.clean.path))},
    )
    yield Output(
        result.quarantine,
        output_name=f"quarantined_{table}",
        metadata={
            "reasons": quarantine_reasons(conn, str(result.quarantine.path)),
            "preview": preview(conn, str(result.quarantine.path)),
        },
    )
    yield AssetCheckResult(
        check_name=ROW_ACCOUNTING_CHECK,
        asset_key=f"clean_{table}",
        passed=result.accounting.balanced,
        severity=AssetCheckSeverity.ERROR,
        description=result.accounting.describe(),
        metadata={name: value for name, value in accounting.items() if name != "row_accounting"},
    )


def clean_assets(kinds: set[str]) -> list[AssetsDefinition]:
    @multi_asset(
        name="clean_orders_step",
        outs=_outs(
            "orders", "Orders, typed and validated; each order_id stored once across all partitions.", kinds
        ),
        partitions_def=landing_date_partitions,
        check_specs=_check_spec("orders"),
    )
    def clean_orders_asset(
        context: AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource, raw_orders: str
    ) -> Iterator:
        locations = lake.locations
        earlier = locations.partitions_before("clean", "clean_orders", context.partition_key)
        with lake_connection(duckdb, lake) as conn:
            result = clean_orders(
                conn, raw_orders, list(earlier.values()), lake.staging_dir(context.run_id, "clean_orders")
            )
            yield from _emit("orders", result, conn)

    @multi_asset(
        name="clean_order_products_step",
        outs=_outs(
            "order_products",
            "Prior and train order lines with their eval_set, checked against orders and products.",
            kinds,
        ),
        partitions_def=landing_date_partitions,
        check_specs=_check_spec("order_products"),
    )
    def clean_order_products_asset(
        context: AssetExecutionContext,
        lake: LakeResource,
        duckdb: DuckDBResource,
        raw_order_products_prior: str,
        raw_order_products_train: str,
        clean_orders: str,
        clean_products: str,
    ) -> Iterator:
        locations = lake.locations
        key = context.partition_key
        earlier_orders = locations.partitions_before("clean", "clean_orders", key)
        earlier_lines = locations.partitions_before("clean", "clean_order_products", key)
        with lake_connection(duckdb, lake) as conn:
            result = clean_order_products(
                conn,
                raw_order_products_prior,
                raw_order_products_train,
                [*earlier_orders.values(), clean_orders],
                clean_products,
                list(earlier_lines.values()),
                lake.staging_dir(context.run_id, "clean_order_products"),
            )
            yield from _emit("order_products", result, conn)

    @multi_asset(
        name="clean_products_step",
        outs=_outs(
            "products",
            "Products as a slowly changing dimension (type 2): valid_from, valid_to, is_current.",
            kinds,
        ),
        partitions_def=landing_date_partitions,
        check_specs=_check_spec("products"),
    )
    def clean_products_asset(
        context: AssetExecutionContext,
        lake: LakeResource,
        duckdb: DuckDBResource,
        raw_products: str,
        clean_aisles: str,
        clean_departments: str,
    ) -> Iterator:
        key = context.partition_key
        previous = lake.locations.partitions_before("clean", "clean_products", key)
        with lake_connection(duckdb, lake) as conn:
            result = clean_products(
                conn,
                raw_products,
                next(reversed(previous.values()), None),
                clean_aisles,
                clean_departments,
                parse_partition_key(key),
                lake.staging_dir(context.run_id, "clean_products"),
            )
            yield from _emit("products", result, conn)

    return [
        clean_orders_asset,
        clean_order_products_asset,
        clean_products_asset,
        *(build_dimension_asset(dimension, kinds) for dimension in (AISLES, DEPARTMENTS)),
    ]


def build_dimension_asset(dimension: Dimension, kinds: set[str]) -> AssetsDefinition:
    """Aisles and departments: the whole lookup table as of each landing date, latest name wins."""
    table = dimension.table

    @multi_asset(
        name=f"clean_{table}_step",
        outs=_outs(table, f"{table.capitalize()} as of this landing date (latest name wins).", kinds),
        partitions_def=landing_date_partitions,
        check_specs=_check_spec(table),
        ins={"raw_uri": AssetIn(f"raw_{table}")},
    )
    def dimension_asset(
        context: AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource, raw_uri: str
    ):
        key = context.partition_key
        previous = lake.locations.partitions_before("clean", f"clean_{table}", key)
        with lake_connection(duckdb, lake) as conn:
            result = clean_dimension(
                conn,
                dimension,
                raw_uri,
                next(reversed(previous.values()), None),
                parse_partition_key(key),
                lake.staging_dir(context.run_id, f"clean_{table}"),
            )
            yield from _emit(table, result, conn)

    return dimension_asset
