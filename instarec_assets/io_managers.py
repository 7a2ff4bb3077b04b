"""One partition-aware parquet IO manager for every zone, on local disk or S3.

Built on Dagster's UPathIOManager: it only decides the seed system's layout
(`<table>/year=YYYY/month=MM/day=DD/<table>.parquet`) and how a file is published atomically.
Assets hand it a finished local parquet file (or a pyarrow Table); downstream assets receive the
partition's URI and scan it with DuckDB, so large tables never pass through pandas.
"""

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    ConfigurableIOManagerFactory,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
    TableColumn,
    TableSchema,
    UPathIOManager,
)
from upath import UPath

from instarec_assets.column_docs import column_description
from instarec_assets.history import HistoryWait, require_complete
from instarec_assets.lake.duck import StagedParquet
from instarec_assets.lake.locations import LakeLocations, model_relpath, partition_relpath
from instarec_assets.lake.publish import publish
from instarec_assets.lake.staging import StagedLocation, StagingUri
from instarec_assets.partitions import HISTORY_INPUT, THIS_PARTITION, THROUGH_PARTITION
from instarec_assets.resources import LakeResource

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


class ZoneParquetIOManager(UPathIOManager):
    """Stores each partition of a zone table as one parquet file; loads it as a URI for DuckDB."""

    extension = ".parquet"

    def __init__(self, base_path: UPath, zone: str, scratch: Path, wait: HistoryWait):
        super().__init__(base_path=base_path)
        self.zone = zone
        self.scratch = scratch
        self.wait = wait

    def get_path_for_partition(
        self, context: InputContext | OutputContext, path: UPath, partition: str
    ) -> UPath:
        table = context.asset_key.path[-1]
        # partition_relpath ends in ".parquet"; UPathIOManager appends the extension itself.
        relative = partition_relpath(table, partition).removesuffix(self.extension)
        return self._base_path.joinpath(*relative.split("/"))

    def dump_to_path(self, context: OutputContext, obj: StagedParquet | pa.Table, path: UPath) -> None:
        if isinstance(obj, pa.Table):
            # Named after the run, so a killed run's file is reclaimed (completeness.reclaim_scratch).
            handle, name = tempfile.mkstemp(prefix=f"{context.run_id}-", suffix=".parquet", dir=self.scratch)
            os.close(handle)
            pq.write_table(obj, name, compression="zstd")
            obj = StagedParquet(Path(name), obj.num_rows)
        if not isinstance(obj, StagedParquet):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the lake stores StagedParquet or pyarrow.Table, "
                f"not {type(obj).__name__}"
            )
        fs = path.fs if isinstance(obj.path, StagingUri) else None  # staged on S3 by the Spark job
        context.add_output_metadata(parquet_metadata(obj.path, self.zone, context.asset_key.path[-1], fs))
        publish(obj.path, path)

    def load_from_path(self, context: InputContext, path: UPath) -> str:
        if not path.exists():
            raise FileNotFoundError(f"partition file {path} does not exist; materialize that partition first")
        return str(path)

    def _partition_path(self, context: InputContext, partition_key: str) -> UPath:
        return self._with_extension(self.get_path_for_partition(context, self._base_path, partition_key))

    def load_input(self, context: InputContext):
        read = context.definition_metadata.get(HISTORY_INPUT)
        if read == THROUGH_PARTITION:
            return self.load_history(context)
        if read == THIS_PARTITION:
            return self.load_from_path(context, self._partition_path(context, context.partition_key))
        return super().load_input(context)

    def load_history(self, context: InputContext) -> list[str]:
        """The URIs of every batch up to the run's partition, in date order (see partitions.history_input).

        Every earlier batch must be stored. (Dagster cannot attach input metadata to a multi-partition
        input; the steps record the batches they read as `history_read`.)
        """
        table = context.asset_key.path[-1]
        run_partition = context.partition_key
        keys = sorted(key for key in context.asset_partition_keys if key <= run_partition)
        paths = {key: self._partition_path(context, key) for key in keys}
        require_complete(
            table,
            run_partition,
            keys,
            lambda key: paths[key].exists(),
            context.instance,
            context.step_context.run_id,
            self.wait,
        )
        if run_partition not in paths or not paths[run_partition].exists():
            raise FileNotFoundError(
                f"{table}: partition {run_partition} is not stored; materialize it before what reads it"
            )
        return [str(paths[key]) for key in keys]


def parquet_metadata(
    path: StagedLocation, zone: str, table: str = "", fs: "AbstractFileSystem | None" = None
) -> dict[str, MetadataValue]:
    """Row count and schema from the parquet footer (each column described: column_docs.py), shown on
    every lake asset in the UI; a StagingUri is read through `fs` (only its footer is fetched)."""
    if isinstance(path, StagingUri):
        if fs is None:
            raise ValueError(f"{path} is staged remotely: its filesystem is needed")
        with fs.open(str(path), "rb") as handle:
            return _parquet_metadata(pq.ParquetFile(handle), zone, table, fs.size(str(path)))
    return _parquet_metadata(pq.ParquetFile(path), zone, table, path.stat().st_size)


def _parquet_metadata(parquet: pq.ParquetFile, zone: str, table: str, size: int) -> dict[str, MetadataValue]:
    columns = [
        TableColumn(field.name, str(field.type), description=column_description(table, field.name))
        for field in parquet.schema_arrow
    ]
    return {
        "dagster/row_count": MetadataValue.int(parquet.metadata.num_rows),
        "dagster/column_schema": MetadataValue.table_schema(TableSchema(columns=columns)),
        "zone": MetadataValue.text(zone),
        "size_bytes": MetadataValue.int(size),
    }


@dataclass(frozen=True)
class StagedArtifacts:
    """A local folder of files that make up one partition of a model (model, card, plots)."""

    folder: Path
    # Written last, so a reader that finds it knows the rest of the folder is complete.
    commit_file: str


class ArtifactFolderIOManager(UPathIOManager):
    """Stores each partition of a model asset as a folder: `models/<asset>/year=/month=/day=/`."""

    def __init__(self, base_path: UPath, scratch: Path):
        super().__init__(base_path=base_path)
        self.scratch = scratch

    def get_path_for_partition(
        self, context: InputContext | OutputContext, path: UPath, partition: str
    ) -> UPath:
        relative = model_relpath(context.asset_key.path[-1], partition)
        return self._base_path.joinpath(*relative.split("/"))

    def dump_to_path(self, context: OutputContext, obj: StagedArtifacts, path: UPath) -> None:
        if not isinstance(obj, StagedArtifacts):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected StagedArtifacts, not {type(obj).__name__}"
            )
        files = sorted(item for item in obj.folder.iterdir() if item.is_file())
        context.add_output_metadata({"artifacts": MetadataValue.json([item.name for item in files])})
        ordered = [item for item in files if item.name != obj.commit_file] + [obj.folder / obj.commit_file]
        if path.protocol in ("", "file", "local"):
            publish_folder(obj.folder, Path(path.path))
        else:
            for item in ordered:
                path.fs.put_file(str(item), f"{path.path}/{item.name}")
        shutil.rmtree(obj.folder, ignore_errors=True)

    def load_from_path(self, context: InputContext, path: UPath) -> str:
        """A local folder with the partition's files (downloaded first when the lake is on S3)."""
        return str(local_folder(path, self.scratch))


def publish_folder(staged: Path, target: Path) -> None:
    """Make a staged folder the partition's model folder with one rename.

    The partition path is a symlink to a hidden version folder beside it; the new version is copied
    in full, then a new link replaces the old one (`os.replace`, atomic). A run killed at any point
    leaves the old version or the new one, never neither; leftovers of killed runs (hidden siblings
    of the target) are removed on the next publish of the partition.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    version = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    shutil.copytree(staged, version)
    link = version.with_name(f"{version.name}.link")
    os.symlink(version.name, link)
    if target.exists() and not target.is_symlink():
        # A folder published before versioned folders: moved aside once (not atomic, one time only).
        os.replace(target, target.with_name(f".{target.name}.{uuid.uuid4().hex}.legacy"))
    os.replace(link, target)
    for sibling in target.parent.glob(f".{target.name}.*"):
        if sibling != version:
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def local_folder(path: UPath, scratch: Path) -> Path:
    """A model folder on local disk: itself locally, a fresh download under `scratch` from S3."""
    if path.protocol in ("", "file", "local"):
        if not Path(path.path).is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist; materialize that partition first")
        return Path(path.path)
    local = scratch / f"download-{uuid.uuid4().hex}"
    path.fs.get(f"{path.path}/", str(local) + "/", recursive=True)
    return local


def local_model_folder(locations: LakeLocations, asset: str, partition_key: str) -> Path:
    """A model asset's stored partition as a local folder (downloaded to scratch in aws mode), for a
    step that reads an earlier model of its own (the retrain policy keeps it or not)."""
    uri = locations.model_uri(asset, partition_key)
    return local_folder(UPath(uri, **locations.storage_options()), locations.scratch_dir())


class ModelArtifactIOManager(ConfigurableIOManagerFactory):
    """Model folders under the curated zone's `models/` prefix, locally or on S3."""

    lake: ResourceDependency[LakeResource]

    def create_io_manager(self, context) -> ArtifactFolderIOManager:
        locations = self.lake.locations
        return ArtifactFolderIOManager(
            UPath(locations.models_uri(), **locations.storage_options()),
            locations.scratch_dir(),
        )


class LakeIOManager(ConfigurableIOManagerFactory):
    """The parquet IO manager for one zone of the lake, configured from the lake resource."""

    lake: ResourceDependency[LakeResource]
    zone: str

    def create_io_manager(self, context) -> ZoneParquetIOManager:
        locations = self.lake.locations
        return ZoneParquetIOManager(
            UPath(locations.zone_uri(self.zone), **locations.storage_options()),
            self.zone,
            locations.scratch_dir(),
            self.lake.history_wait,
        )
