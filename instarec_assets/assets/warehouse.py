"""The analysts' warehouse as assets: a DuckDB file rebuilt from the clean zone for each landing date,
and in aws mode its masked tables on S3 and in the Glue catalog for Athena."""

from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource
from tabulate import tabulate

from instarec_assets.assets.curated import CLEAN_SNAPSHOT_INS, clean_snapshot
from instarec_assets.assets.metadata import history_read
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.partitions import HISTORY_POOL, history_input, landing_batches
from instarec_assets.resources import AnalystCatalogResource, LakeResource, duckdb_resource
from instarec_assets.warehouse import WarehouseSummary, build_warehouse_file, load_salt, warehouse_path
from instarec_assets.warehouse.masked import MaskedSummary, glue_client, publish_masked_tables

WAREHOUSE_RESOURCE_KEY = "warehouse_duckdb"
QUARANTINED_TABLES = ("orders", "order_products", "products", "aisles", "departments")
WAREHOUSE_INS = {
    **CLEAN_SNAPSHOT_INS,
    **{f"quarantined_{table}": history_input(f"quarantined_{table}") for table in QUARANTINED_TABLES},
}


def warehouse_duckdb_resource(locations: LakeLocations) -> DuckDBResource:
    """The warehouse file, with the lake's DuckDB settings (memory limit, spill folder, no downloads)."""
    return DuckDBResource(
        database=str(warehouse_path(locations.home_path)),
        connection_config=duckdb_resource(locations).connection_config,
    )


@asset(
    name="analyst_warehouse",
    group_name="consumption",
    kinds={"duckdb"},
    ins=WAREHOUSE_INS,
    partitions_def=landing_batches,
    pool=HISTORY_POOL,
    description=(
        "The analysts' sandbox: INSTAREC_HOME/warehouse/analyst.duckdb, a copy of the clean zone as "
        "of the partition (aisles, departments, current products, product_history, orders, "
        "order_products), the joined_order_products view, mart_* tables and the quarantined rows of "
        "every batch (masked); user ids appear only as a salted hash (user_key). Query it with "
        "`instarec sql`."
    ),
)
def analyst_warehouse(
    context: AssetExecutionContext,
    lake: LakeResource,
    warehouse_duckdb: DuckDBResource,
    clean_orders: list[str],
    clean_order_products: list[str],
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
    quarantined_orders: list[str],
    quarantined_order_products: list[str],
    quarantined_products: list[str],
    quarantined_aisles: list[str],
    quarantined_departments: list[str],
) -> MaterializeResult:
    locations = lake.locations
    salt = load_salt(locations.home_path)

    def connect(path: Path):
        staging = DuckDBResource(database=str(path), connection_config=warehouse_duckdb.connection_config)
        return staging.get_connection()

    summary = build_warehouse_file(
        Path(warehouse_duckdb.database).resolve(),
        clean_snapshot(clean_orders, clean_order_products, clean_products, clean_aisles, clean_departments),
        salt.value,
        as_of=context.partition_key,
        connect=connect,
        filesystem=locations.filesystem,
        quarantine={
            "orders": quarantined_orders,
            "order_products": quarantined_order_products,
            "products": quarantined_products,
            "aisles": quarantined_aisles,
            "departments": quarantined_departments,
        },
    )
    return MaterializeResult(
        metadata={
            **_metadata(summary, salt.source),
            "history_read": history_read(
                clean_orders=clean_orders, clean_order_products=clean_order_products
            ),
        }
    )


@asset(
    name="analyst_masked_tables",
    group_name="consumption",
    kinds={"s3", "glue"},
    ins=WAREHOUSE_INS,
    partitions_def=landing_batches,
    pool=HISTORY_POOL,
    description=(
        "aws mode: the analyst_warehouse's tables as parquet in the analysts' bucket "
        "(<table>/year=/month=/day=/), user ids only as the salted user_key (salt from Secrets "
        "Manager), registered in the environment's Glue database so Athena shows only masked tables."
    ),
)
def analyst_masked_tables(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    analyst_catalog: AnalystCatalogResource,
    clean_orders: list[str],
    clean_order_products: list[str],
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
    quarantined_orders: list[str],
    quarantined_order_products: list[str],
    quarantined_products: list[str],
    quarantined_aisles: list[str],
    quarantined_departments: list[str],
) -> MaterializeResult:
    locations = lake.locations
    salt = load_salt(locations.home_path)
    with duckdb.get_connection() as conn:
        summary = publish_masked_tables(
            conn,
            clean_snapshot(
                clean_orders, clean_order_products, clean_products, clean_aisles, clean_departments
            ),
            salt.value,
            context.partition_key,
            bucket=analyst_catalog.bucket,
            database=analyst_catalog.database,
            filesystem=locations.filesystem,
            glue=glue_client(locations.region, locations.endpoint_url),
            scratch=locations.home_path / "tmp",
            quarantine={
                "orders": quarantined_orders,
                "order_products": quarantined_order_products,
                "products": quarantined_products,
                "aisles": quarantined_aisles,
                "departments": quarantined_departments,
            },
        )
    return MaterializeResult(metadata=_masked_metadata(summary, salt.source))


def _masked_metadata(summary: MaskedSummary, salt_source: str) -> dict[str, MetadataValue]:
    metadata = {
        "as_of": MetadataValue.text(summary.as_of),
        "published": MetadataValue.bool(summary.published),
        "glue_database": MetadataValue.text(summary.database),
        "user_key_salt": MetadataValue.text(salt_source),
    }
    if not summary.published:
        metadata["kept"] = MetadataValue.text(
            f"the catalog shows {summary.kept_as_of}, newer than {summary.as_of}: kept it"
        )
        return metadata
    tables = "\n".join(
        f"| `{r.name}` | {r.rows:,} | `{summary.locations[r.name]}` |" for r in summary.relations
    )
    metadata["tables"] = MetadataValue.md("| Glue table | rows | location |\n| --- | ---: | --- |\n" + tables)
    metadata["dagster/row_count"] = MetadataValue.int(
        next(r.rows for r in summary.relations if r.name == "joined_order_products")
    )
    return metadata


def _metadata(summary: WarehouseSummary, salt_source: str) -> dict[str, MetadataValue]:
    metadata = {
        "path": MetadataValue.path(str(summary.path)),
        "as_of": MetadataValue.text(summary.as_of),
        "published": MetadataValue.bool(summary.published),
        "user_key_salt": MetadataValue.text(salt_source),
    }
    if not summary.published:
        metadata["kept"] = MetadataValue.text(
            f"the published warehouse is as of {summary.kept_as_of}, newer than {summary.as_of}: kept it"
        )
        return metadata
    relations = "\n".join(f"| `{r.name}` | {r.kind} | {r.rows:,} |" for r in summary.relations)
    metadata.update(
        {
            "dagster/row_count": MetadataValue.int(summary.rows("joined_order_products")),
            "relations": MetadataValue.md("| name | kind | rows |\n| --- | --- | ---: |\n" + relations),
            "mart_top_products_preview": MetadataValue.md(
                tabulate(summary.preview_rows, headers=summary.preview_columns, tablefmt="github")
                if summary.preview_rows
                else "_no rows_"
            ),
            "build_seconds": MetadataValue.float(round(summary.seconds, 2)),
        }
    )
    return metadata
