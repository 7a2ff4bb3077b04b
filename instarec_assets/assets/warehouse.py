"""The analysts' warehouse as assets: locally a DuckDB file built from the clean zone for each landing
date (after the first, the previous date's file updated with the batch), and in aws mode with an
analysts' bucket its masked tables on S3 and in the Glue catalog for Athena instead."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource
from tabulate import tabulate

from instarec_assets.assets.curated import CLEAN_SNAPSHOT_INS, clean_snapshot
from instarec_assets.assets.metadata import history_read
from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.locations import PARTITION_DIR_PATTERN, LakeLocations
from instarec_assets.partitions import HISTORY_POOL, history_input, landing_batches
from instarec_assets.resources import AnalystCatalogResource, LakeResource, duckdb_resource
from instarec_assets.warehouse import (
    BatchRows,
    WarehouseSalt,
    WarehouseSummary,
    build_warehouse_file,
    load_salt,
    warehouse_path,
)
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


@dataclass(frozen=True)
class WarehouseInputs:
    """What both warehouse assets build from: the clean snapshot, the quarantined rows, the salt."""

    snapshot: CleanSnapshot
    quarantine: dict[str, list[str]]
    salt: WarehouseSalt
    history_read: MetadataValue

    def batch_rows(self, partition_key: str) -> BatchRows | None:
        """This batch's own files and the batch before it (None for the first batch)."""
        orders = _by_batch(self.snapshot.orders)
        earlier = [key for key in orders if key < partition_key]
        if not earlier:
            return None
        lines = _by_batch(self.snapshot.order_products)
        return BatchRows(
            previous=max(earlier),
            orders=[orders[partition_key]] if partition_key in orders else [],
            order_products=[lines[partition_key]] if partition_key in lines else [],
            quarantine={
                table: [uri] if (uri := _by_batch(uris).get(partition_key)) else []
                for table, uris in self.quarantine.items()
            },
        )


def warehouse_inputs(lake: LakeResource, inputs: Mapping[str, list[str] | str]) -> WarehouseInputs:
    """The loaded WAREHOUSE_INS as the warehouse code's input, and the salt to mask user ids with."""
    orders, lines = list(inputs["clean_orders"]), list(inputs["clean_order_products"])
    return WarehouseInputs(
        snapshot=clean_snapshot(
            orders,
            lines,
            str(inputs["clean_products"]),
            str(inputs["clean_aisles"]),
            str(inputs["clean_departments"]),
        ),
        quarantine={table: list(inputs[f"quarantined_{table}"]) for table in QUARANTINED_TABLES},
        salt=load_salt(lake.locations.home_path),
        history_read=history_read(clean_orders=orders, clean_order_products=lines),
    )


def _by_batch(uris: Sequence[str]) -> dict[str, str]:
    """History URIs by their batch (the lake's year=/month=/day= folder)."""
    return {"-".join(match.groups()): uri for uri in uris if (match := PARTITION_DIR_PATTERN.search(uri))}


class WarehouseConfig(Config):
    """Run configuration of analyst_warehouse."""

    # Rebuild from every batch instead of updating the previous batch's warehouse with this batch
    # (the two give the same tables; tested).
    full_rebuild: bool = False


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
        "every batch (masked); user ids appear only as a salted hash (user_key). After the first "
        "batch, the previous batch's warehouse with this batch's rows appended (`full_rebuild` run "
        "config rebuilds it). Query it with `instarec sql`. Not built in aws mode with an analysts' "
        "bucket (analyst_masked_tables is)."
    ),
)
def analyst_warehouse(
    context: AssetExecutionContext,
    config: WarehouseConfig,
    lake: LakeResource,
    warehouse_duckdb: DuckDBResource,
    **inputs: list[str] | str,
) -> MaterializeResult:
    built = warehouse_inputs(lake, inputs)

    def connect(path: Path):
        staging = DuckDBResource(database=str(path), connection_config=warehouse_duckdb.connection_config)
        return staging.get_connection()

    summary = build_warehouse_file(
        Path(warehouse_duckdb.database).resolve(),
        built.snapshot,
        built.salt.value,
        as_of=context.partition_key,
        connect=connect,
        filesystem=lake.locations.filesystem,
        quarantine=built.quarantine,
        batch=built.batch_rows(context.partition_key),
        full_reason="asked (full_rebuild)" if config.full_rebuild else "",
    )
    return MaterializeResult(
        metadata={**_metadata(summary, built.salt.source), "history_read": built.history_read}
    )


@asset(
    name="analyst_masked_tables",
    group_name="consumption",
    kinds={"s3", "glue"},
    ins=WAREHOUSE_INS,
    partitions_def=landing_batches,
    pool=HISTORY_POOL,
    description=(
        "aws mode with an analysts' bucket, in place of analyst_warehouse: its tables as parquet in "
        "the analysts' bucket (<table>/year=/month=/day=/), user ids only as the salted user_key (salt "
        "from Secrets Manager), registered in the environment's Glue database so Athena shows only "
        "masked tables."
    ),
)
def analyst_masked_tables(
    context: AssetExecutionContext,
    lake: LakeResource,
    duckdb: DuckDBResource,
    analyst_catalog: AnalystCatalogResource,
    **inputs: list[str] | str,
) -> MaterializeResult:
    built = warehouse_inputs(lake, inputs)
    locations = lake.locations
    with duckdb.get_connection() as conn:
        summary = publish_masked_tables(
            conn,
            built.snapshot,
            built.salt.value,
            context.partition_key,
            bucket=analyst_catalog.bucket,
            database=analyst_catalog.database,
            filesystem=locations.filesystem,
            glue=glue_client(locations.region, locations.endpoint_url),
            scratch=locations.home_path / "tmp",
            quarantine=built.quarantine,
        )
    return MaterializeResult(
        metadata={**_masked_metadata(summary, built.salt.source), "history_read": built.history_read}
    )


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
    relations = "\n".join(f"| `{r.name}` | {r.kind} | {r.rows:,} | {r.built} |" for r in summary.relations)
    metadata.update(
        {
            "dagster/row_count": MetadataValue.int(summary.rows("joined_order_products")),
            "relations": MetadataValue.md(
                "| name | kind | rows | built |\n| --- | --- | ---: | --- |\n" + relations
            ),
            "mart_top_products_preview": MetadataValue.md(
                tabulate(summary.preview_rows, headers=summary.preview_columns, tablefmt="github")
                if summary.preview_rows
                else "_no rows_"
            ),
            "build_seconds": MetadataValue.float(round(summary.seconds, 2)),
            "mode": MetadataValue.text(summary.mode),
        }
    )
    if summary.full_reason:
        metadata["full_reason"] = MetadataValue.text(summary.full_reason)
    return metadata
