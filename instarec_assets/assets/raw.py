"""Raw zone: each landed Instacart file, every row as it came, with lineage columns."""

from dagster import AssetExecutionContext, AssetsDefinition, MetadataValue, Output, asset
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.metadata import preview
from instarec_assets.lake.duck import StagedParquet
from instarec_assets.lake.landing import ingest_landing_file
from instarec_assets.lake.schemas import LANDING_FILES, LandingFile
from instarec_assets.partitions import landing_date_partitions
from instarec_assets.resources import LakeResource


def build_raw_asset(spec: LandingFile, kinds: set[str]) -> AssetsDefinition:
    """One raw asset per landing file; they differ only in the file they read."""

    @asset(
        name=f"raw_{spec.table}",
        group_name="raw",
        partitions_def=landing_date_partitions,
        io_manager_key="raw_io_manager",
        kinds=kinds,
        description=f"Every row of {spec.file_stem}.csv as landed (text), with source file, row and ingest time.",
    )
    def raw_asset(
        context: AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource
    ) -> Output[StagedParquet]:
        locations = lake.locations
        folder = locations.landing_partition_uri(context.partition_key)
        scratch = lake.staging_dir(context.run_id, spec.table)
        with duckdb.get_connection() as conn:
            landed = ingest_landing_file(conn, locations.filesystem, folder, spec, scratch, lake.now())
            table_preview = preview(conn, str(landed.staged.path))
        return Output(
            landed.staged,
            metadata={
                "source_file": MetadataValue.path(landed.source_file),
                "source_sha256": MetadataValue.text(landed.sha256),
                "source_bytes": MetadataValue.int(landed.size_bytes),
                "source_rows": MetadataValue.int(landed.staged.row_count),
                "unparseable_lines": MetadataValue.int(landed.rejected_lines),
                "preview": table_preview,
            },
        )

    return raw_asset


def raw_assets(kinds: set[str]) -> list[AssetsDefinition]:
    return [build_raw_asset(spec, kinds) for spec in LANDING_FILES.values()]
