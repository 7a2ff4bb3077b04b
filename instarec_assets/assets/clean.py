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
from instarec_assets.assets.spark_jobs import clean_on_spark
from instarec_assets.history import own_earlier_partitions
from instarec_assets.lake.accounting import ROW_ACCOUNTING_CHECK, CleanResult
from instarec_assets.lake.clean_steps import SPARK_ENGINE, CleanRequest, run_clean_step
from instarec_assets.lake.locations import parse_partition_key
from instarec_assets.partitions import HISTORY_POOL, batch_input_with_history, history_input, landing_batches
from instarec_assets.resources import (
    ComputeResource,
    EmrServerlessResource,
    ForgetListResource,
    LakeResource,
    lake_connection,
)

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
    table: str,
    result: CleanResult,
    conn: duckdb.DuckDBPyConnection,
    own_history: dict[str, str],
    engine: str,
) -> Iterator:
    """The clean table, its quarantine, and the row accounting check, with their metadata."""
    accounting = accounting_metadata(result.accounting)
    yield Output(
        result.clean,
        output_name=f"clean_{table}",
        metadata={
            "engine": engine,
            **accounting,
            "preview": preview(conn, str(result.clean.path)),
            "own_history_partitions": MetadataValue.json(sorted(own_history)),
        },
    )
    yield Output(
        result.quarantine,
        output_name=f"quarantined_{table}",
        metadata={
            "engine": engine,
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


def _clean(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    compute: ComputeResource,
    emr: EmrServerlessResource,
    table: str,
    inputs: dict,
    forget: ForgetListResource | None = None,
) -> Iterator:
    """Run one table's clean step on the configured engine and emit its outputs and check. Spark in
    aws mode is an EMR Serverless job run staging under INSTAREC_EMR_STAGING_URI; otherwise the step
    stages in a local folder."""
    earlier = _own_history(context, lake, f"clean_{table}")
    forget_list = forget.load() if forget is not None else None
    on_emr = compute.engine == SPARK_ENGINE and lake.locations.is_aws
    if on_emr:
        staging = lake.staging_prefix(emr.settings().step_staging_uri(context.run_id, table))
    else:
        staging = str(lake.staging_dir(context.run_id, f"clean_{table}"))
    request = CleanRequest(
        table=table,
        partition_date=parse_partition_key(context.partition_key).isoformat(),
        staging=staging,
        inputs=inputs,
        history=tuple(earlier.values()),
        forget_salt=forget_list.salt if forget_list else "",
        forget_hashes=tuple(sorted(forget_list.user_hashes)) if forget_list else (),
    )
    with lake_connection(duckdb, lake) as conn:
        if compute.engine == SPARK_ENGINE:
            result = clean_on_spark(context, lake, request, emr if on_emr else None)
        else:
            result = run_clean_step(conn, request)
        yield from _emit(table, result, conn, earlier, compute.engine)


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
    compute: ComputeResource,
    emr_serverless: EmrServerlessResource,
    forget_list: ForgetListResource,
    raw_orders: str,
) -> Iterator:
    yield from _clean(
        context, lake, duckdb, compute, emr_serverless, "orders", {"raw_orders": raw_orders}, forget_list
    )


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
    compute: ComputeResource,
    emr_serverless: EmrServerlessResource,
    raw_order_products_prior: str,
    raw_order_products_train: str,
    clean_orders: list[str],
    clean_products: str,
    quarantined_orders: str,
) -> Iterator:
    inputs = {
        "raw_order_products_prior": raw_order_products_prior,
        "raw_order_products_train": raw_order_products_train,
        "clean_orders": list(clean_orders),
        "clean_products": clean_products,
        "quarantined_orders": quarantined_orders,
    }
    yield from _clean(context, lake, duckdb, compute, emr_serverless, "order_products", inputs)


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
    compute: ComputeResource,
    emr_serverless: EmrServerlessResource,
    raw_products: str,
    clean_aisles: str,
    clean_departments: str,
) -> Iterator:
    inputs = {
        "raw_products": raw_products,
        "clean_aisles": clean_aisles,
        "clean_departments": clean_departments,
    }
    yield from _clean(context, lake, duckdb, compute, emr_serverless, "products", inputs)


@multi_asset(
    name="clean_aisles_step",
    outs=_outs("aisles", "Aisles as of this landing date (latest name wins)."),
    ins={"raw_aisles": batch_input_with_history("raw_aisles")},
    partitions_def=landing_batches,
    check_specs=_check_spec("aisles"),
    pool=HISTORY_POOL,
)
def clean_aisles_step(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    compute: ComputeResource,
    emr_serverless: EmrServerlessResource,
    raw_aisles: str,
) -> Iterator:
    """Aisles: the whole lookup table as of each landing date, latest name wins."""
    yield from _clean(context, lake, duckdb, compute, emr_serverless, "aisles", {"raw_aisles": raw_aisles})


@multi_asset(
    name="clean_departments_step",
    outs=_outs("departments", "Departments as of this landing date (latest name wins)."),
    ins={"raw_departments": batch_input_with_history("raw_departments")},
    partitions_def=landing_batches,
    check_specs=_check_spec("departments"),
    pool=HISTORY_POOL,
)
def clean_departments_step(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    compute: ComputeResource,
    emr_serverless: EmrServerlessResource,
    raw_departments: str,
) -> Iterator:
    yield from _clean(
        context, lake, duckdb, compute, emr_serverless, "departments", {"raw_departments": raw_departments}
    )


CLEAN_STEPS = [
    clean_orders_step,
    clean_order_products_step,
    clean_products_step,
    clean_aisles_step,
    clean_departments_step,
]
