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
    MetadataValue,
    Output,
    multi_asset,
)
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.metadata import accounting_metadata, preview, quarantine_reasons
from instarec_assets.history import own_earlier_partitions
from instarec_assets.lake.accounting import CleanResult
from instarec_assets.lake.clean_catalog import AISLES, DEPARTMENTS, Dimension, clean_dimension, clean_products
from instarec_assets.lake.clean_order_products import clean_order_products
from instarec_assets.lake.clean_orders import clean_orders
from instarec_assets.lake.locations import parse_partition_key
from instarec_assets.partitions import HISTORY_POOL, batch_input_with_history, history_input, landing_batches
from instarec_assets.resources import ForgetListResource, LakeResource, lake_connection

ROW_ACCOUNTING_CHECK = "row_accounting"


CLEAN_KINDS = {"duckdb", "parquet"}


def _outs(table: str, description: str, kinds: set[str] = CLEAN_KINDS) -> dict[str, AssetOut]:
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


def _emit(
    table: str, result: CleanResult, conn: duckdb.DuckDBPyConnection, own_history: dict[str, str]
) -> Iterator:
    """The clean table, its quarantine, and the row accounting check, with their metadata."""
    accounting = accounting_metadata(result.accounting)
    yield Output(
        result.clean,
        output_name=f"clean_{table}",
        metadata={
            **accounting,
            "preview": preview(conn, str(result.clean.path)),
            "own_history_partitions": MetadataValue.json(sorted(own_history)),
        },
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


def _own_history(context: AssetExecutionContext, lake: LakeResource, table: str) -> dict[str, str]:
    """This clean table in every earlier batch, complete (see instarec_assets.history)."""
    locations = lake.locations
    return own_earlier_partitions(
        table,
        context.partition_key,
        context.instance,
        context.run_id,
        lambda key: locations.partition_uri("clean", table, key),
        lambda uri: locations.filesystem.exists(uri),
        lake.history_wait,
    )


@multi_asset(
    name="clean_orders_step",
    outs=_outs("orders", "Orders, typed and validated; each order_id stored once across all partitions."),
    ins={"raw_orders": batch_input_with_history("raw_orders")},
    partitions_def=landing_batches,
    check_specs=_check_spec("orders"),
    pool=HISTORY_POOL,
)
def clean_orders_step(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    forget_list: ForgetListResource,
    raw_orders: str,
) -> Iterator:
    earlier = _own_history(context, lake, "clean_orders")
    with lake_connection(duckdb, lake) as conn:
        result = clean_orders(
            conn,
            raw_orders,
            list(earlier.values()),
            lake.staging_dir(context.run_id, "clean_orders"),
            forget_list.load(),
        )
        yield from _emit("orders", result, conn, earlier)


@multi_asset(
    name="clean_order_products_step",
    outs=_outs(
        "order_products",
        "Prior and train order lines with their eval_set, checked against orders and products.",
    ),
    ins={
        "raw_order_products_prior": batch_input_with_history("raw_order_products_prior"),
        "raw_order_products_train": batch_input_with_history("raw_order_products_train"),
        "clean_orders": history_input("clean_orders"),
        # this batch's quarantined orders: lines of a forgotten user's orders are quarantined too
        "quarantined_orders": AssetIn("quarantined_orders"),
    },
    partitions_def=landing_batches,
    check_specs=_check_spec("order_products"),
    pool=HISTORY_POOL,
)
def clean_order_products_step(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    raw_order_products_prior: str,
    raw_order_products_train: str,
    clean_orders: list[str],
    clean_products: str,
    quarantined_orders: str,
) -> Iterator:
    earlier_lines = _own_history(context, lake, "clean_order_products")
    with lake_connection(duckdb, lake) as conn:
        result = clean_order_products(
            conn,
            raw_order_products_prior,
            raw_order_products_train,
            clean_orders,
            clean_products,
            list(earlier_lines.values()),
            lake.staging_dir(context.run_id, "clean_order_products"),
            quarantined_orders,
        )
        yield from _emit("order_products", result, conn, earlier_lines)


@multi_asset(
    name="clean_products_step",
    outs=_outs(
        "products", "Products as a slowly changing dimension (type 2): valid_from, valid_to, is_current."
    ),
    ins={"raw_products": batch_input_with_history("raw_products")},
    partitions_def=landing_batches,
    check_specs=_check_spec("products"),
    pool=HISTORY_POOL,
)
def clean_products_step(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    raw_products: str,
    clean_aisles: str,
    clean_departments: str,
) -> Iterator:
    previous = _own_history(context, lake, "clean_products")
    with lake_connection(duckdb, lake) as conn:
        result = clean_products(
            conn,
            raw_products,
            next(reversed(previous.values()), None),
            clean_aisles,
            clean_departments,
            parse_partition_key(context.partition_key),
            lake.staging_dir(context.run_id, "clean_products"),
        )
        yield from _emit("products", result, conn, previous)


def _clean_dimension(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    dimension: Dimension,
    raw_uri: str,
) -> Iterator:
    """Aisles and departments: the whole lookup table as of each landing date, latest name wins."""
    table = dimension.table
    previous = _own_history(context, lake, f"clean_{table}")
    with lake_connection(duckdb, lake) as conn:
        result = clean_dimension(
            conn,
            dimension,
            raw_uri,
            next(reversed(previous.values()), None),
            parse_partition_key(context.partition_key),
            lake.staging_dir(context.run_id, f"clean_{table}"),
        )
        yield from _emit(table, result, conn, previous)


@multi_asset(
    name="clean_aisles_step",
    outs=_outs("aisles", "Aisles as of this landing date (latest name wins)."),
    ins={"raw_aisles": batch_input_with_history("raw_aisles")},
    partitions_def=landing_batches,
    check_specs=_check_spec("aisles"),
    pool=HISTORY_POOL,
)
def clean_aisles_step(
    context: AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource, raw_aisles: str
) -> Iterator:
    yield from _clean_dimension(context, lake, duckdb, AISLES, raw_aisles)


@multi_asset(
    name="clean_departments_step",
    outs=_outs("departments", "Departments as of this landing date (latest name wins)."),
    ins={"raw_departments": batch_input_with_history("raw_departments")},
    partitions_def=landing_batches,
    check_specs=_check_spec("departments"),
    pool=HISTORY_POOL,
)
def clean_departments_step(
    context: AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource, raw_departments: str
) -> Iterator:
    yield from _clean_dimension(context, lake, duckdb, DEPARTMENTS, raw_departments)


CLEAN_STEPS = [
    clean_orders_step,
    clean_order_products_step,
    clean_products_step,
    clean_aisles_step,
    clean_departments_step,
]
