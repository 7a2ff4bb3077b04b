"""Raw zone: each landed Instacart file, every row as it came, with lineage columns."""

import warnings
from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetOut,
    BetaWarning,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    multi_asset,
)
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.metadata import preview
from instarec_assets.lake.landing import LandingFileError, ingest_landing_file
from instarec_assets.lake.schemas import LANDING_FILES
from instarec_assets.partitions import landing_batches
from instarec_assets.resources import LakeResource

RAW_KINDS = {"duckdb", "parquet"}


@multi_asset(
    name="raw_landing_files",
    outs={
        f"raw_{spec.table}": AssetOut(
            io_manager_key="raw_io_manager",
            group_name="raw",
            kinds=RAW_KINDS,
            is_required=False,
            description=(
                f"Every row of {spec.file_stem}.csv as landed (text), with source file, row and ingest time."
            ),
        )
        for spec in LANDING_FILES.values()
    },
    partitions_def=landing_batches,
    can_subset=True,
)
def raw_landing_files(
    context: AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource
) -> Iterator[Output]:
    """Each selected landing file into its raw table; a file that cannot be read fails the step after
    the others are stored, naming every such file."""
    locations = lake.locations
    folder = locations.landing_partition_uri(context.partition_key)
    selected = context.op_execution_context.selected_output_names
    failures: list[str] = []
    for spec in LANDING_FILES.values():
        name = f"raw_{spec.table}"
        if name not in selected:
            continue
        scratch = lake.staging_dir(context.run_id, spec.table)
        try:
            with duckdb.get_connection() as conn:
                landed = ingest_landing_file(conn, locations.filesystem, folder, spec, scratch, lake.now())
                table_preview = preview(conn, str(landed.staged.path))
        except LandingFileError as error:
            failures.append(str(error).strip().splitlines()[0])
            continue
        with warnings.catch_warnings():  # data_version is a beta parameter, stable for this use
            warnings.simplefilter("ignore", BetaWarning)
            output = Output(
                landed.staged,
                output_name=name,
                # The landed file's content is its version: re-landing a changed file marks what read it
                # stale, re-landing the same bytes does not.
                data_version=DataVersion(landed.sha256),
                metadata={
                    "source_file": MetadataValue.path(landed.source_file),
                    "source_sha256": MetadataValue.text(landed.sha256),
                    "source_bytes": MetadataValue.int(landed.size_bytes),
                    "source_rows": MetadataValue.int(landed.staged.row_count),
                    "unparseable_lines": MetadataValue.int(landed.rejected_lines),
                    "preview": table_preview,
                },
            )
        yield output
    if failures:
        raise Failure("; ".join(failures), allow_retries=False)
