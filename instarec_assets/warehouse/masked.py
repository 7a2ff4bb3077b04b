"""The analysts' masked tables on S3, registered in the Glue Data Catalog: what Athena shows in aws mode.

The local warehouse is a DuckDB file; on AWS that file would live on a run task's /tmp and be lost,
and the analysts' role reads through Athena, which needs parquet on S3 and a catalog. So in aws mode
the same relations (`build.RELATIONS` and `warehouse_info`, built by the same SQL from the same
clean snapshot, `user_key` in place of `user_id`, quarantined rows masked) are written as one parquet
file per table and partition to the analysts' own bucket:

    s3://<analyst bucket>/<table>/year=YYYY/month=MM/day=DD/<table>.parquet

and each Glue table of the environment's analyst database is pointed at the newest partition's
folder. The analysts' role can read that bucket and database only, so raw ids and the clean zone's
`quarantined_*` tables never reach Athena. `joined_order_products` is a view locally; here it is a
table too, because an Athena view would have to be encoded for Presto and could not be read back
by anything but Athena.

Like the local file, the catalog never goes back in time: a build for a partition older than the
one the catalog shows writes its files but leaves the tables where they are.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.duck import attach_filesystem, scalar
from instarec_assets.lake.locations import partition_relpath
from instarec_assets.warehouse.build import (
    MIN_ORDERS_FOR_REORDER_RANK,
    RELATIONS,
    RelationSummary,
    build_warehouse,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

INFO_TABLE = "warehouse_info"
INFO_COMMENT = "The partition these tables are a snapshot of, and when they were built."
AS_OF_PARAMETER = "instarec_as_of"
MASKED_TABLES: tuple[str, ...] = (*(relation.name for relation in RELATIONS), INFO_TABLE)
COMMENTS = {relation.name: relation.comment for relation in RELATIONS} | {INFO_TABLE: INFO_COMMENT}

# Glue column types of the DuckDB types the warehouse's relations have (parquet as DuckDB writes it).
HIVE_TYPES = {
    "BOOLEAN": "boolean",
    "TINYINT": "tinyint",
    "SMALLINT": "smallint",
    "INTEGER": "int",
    "BIGINT": "bigint",
    "FLOAT": "float",
    "DOUBLE": "double",
    "VARCHAR": "string",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
    "TIMESTAMP WITH TIME ZONE": "timestamp",
}
DECIMAL_TYPE = re.compile(r"^DECIMAL\((\d+),(\d+)\)$")
PARQUET_FORMAT = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"},
}


class MaskedCatalogError(ValueError):
    """The analysts' bucket or Glue database is misconfigured or unreachable (one line, names which)."""


@dataclass(frozen=True)
class MaskedSummary:
    """What a publication wrote; `published` is false when the catalog already shows a newer partition."""

    bucket: str
    database: str
    as_of: str
    published: bool
    locations: Mapping[str, str]
    relations: tuple[RelationSummary, ...] = ()
    kept_as_of: str | None = None


def masked_table_uri(bucket: str, table: str, as_of: str) -> str:
    """`s3://<bucket>/<table>/year=/month=/day=/<table>.parquet`, the lake's layout."""
    return f"s3://{bucket}/{partition_relpath(table, as_of)}"


def masked_table_location(bucket: str, table: str, as_of: str) -> str:
    """The folder a Glue table points at: one partition's folder, ending in `/` as Athena wants."""
    return masked_table_uri(bucket, table, as_of).rsplit("/", 1)[0] + "/"


def hive_type(duckdb_type: str, table: str, column: str) -> str:
    """The Glue/Athena type of a DuckDB column type; an unmapped one is an error naming the column."""
    if duckdb_type in HIVE_TYPES:
        return HIVE_TYPES[duckdb_type]
    decimal = DECIMAL_TYPE.match(duckdb_type)
    if decimal:
        return f"decimal({decimal.group(1)},{decimal.group(2)})"
    raise MaskedCatalogError(f"{table}.{column}: no Glue type for DuckDB type {duckdb_type}")


def catalog_as_of(glue: Any, database: str) -> str | None:
    """The partition the catalog's tables show (the `warehouse_info` table's parameter), or None.

    A database that does not exist or cannot be read is a MaskedCatalogError naming it.
    """
    from botocore.exceptions import ClientError

    where = f"INSTAREC_ANALYST_DATABASE {database}"
    try:
        glue.get_database(Name=database)
    except glue.exceptions.EntityNotFoundException:
        raise MaskedCatalogError(f"{where}: no such Glue database (deploy the analytics stack)") from None
    except ClientError as error:
        raise MaskedCatalogError(f"{where}: cannot read the Glue database ({_code(error)})") from None
    try:
        table = glue.get_table(DatabaseName=database, Name=INFO_TABLE)["Table"]
    except glue.exceptions.EntityNotFoundException:
        return None
    return table.get("Parameters", {}).get(AS_OF_PARAMETER)


def publish_masked_tables(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    salt: str,
    as_of: str,
    *,
    bucket: str,
    database: str,
    filesystem: AbstractFileSystem,
    glue: Any,
    scratch: Path,
    quarantine: Mapping[str, Sequence[str]] | None = None,
    min_orders_for_reorder_rank: int = MIN_ORDERS_FOR_REORDER_RANK,
) -> MaskedSummary:
    """Build the masked relations in `conn` (an empty database), write them to S3, then point Glue at them.

    `filesystem` is the lake's fsspec filesystem (it reads the clean zone and writes the analysts'
    bucket); `glue` a boto3 Glue client; `scratch` a local folder for the parquet files before upload.
    """
    locations = {table: masked_table_location(bucket, table, as_of) for table in MASKED_TABLES}
    kept = catalog_as_of(glue, database)
    if kept is not None and kept > as_of:
        return MaskedSummary(bucket, database, as_of, False, locations, kept_as_of=kept)
    attach_filesystem(conn, filesystem)
    relations = build_warehouse(
        conn, snapshot, salt, as_of, min_orders_for_reorder_rank, quarantine=quarantine
    )
    info_rows = int(scalar(conn, f"SELECT count(*) FROM {INFO_TABLE}"))
    relations = (*relations, RelationSummary(INFO_TABLE, "table", info_rows))
    columns = {table: _columns(conn, table) for table in MASKED_TABLES}
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="masked-") as folder:
        for table in MASKED_TABLES:
            local = Path(folder) / f"{table}.parquet"
            conn.execute(f"COPY (SELECT * FROM {table}) TO {_literal(str(local))} (FORMAT parquet)")
            try:
                filesystem.put_file(str(local), masked_table_uri(bucket, table, as_of))
            except OSError as error:
                raise MaskedCatalogError(
                    f"INSTAREC_ANALYST_BUCKET {bucket}: cannot write {table} ({error})"
                ) from None
    # warehouse_info last: the catalog's as_of is its parameter, so a run cut part-way is redone next time.
    for table in MASKED_TABLES:
        _register(glue, database, table, columns[table], locations[table], as_of)
    return MaskedSummary(bucket, database, as_of, True, locations, relations)


def glue_client(region: str, endpoint_url: str = "") -> Any:
    """A boto3 Glue client for the environment (the moto server's endpoint in tests)."""
    import boto3

    return boto3.client("glue", region_name=region, endpoint_url=endpoint_url or None)


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> list[dict[str, str]]:
    described = conn.execute(f"DESCRIBE {table}").fetchall()
    return [{"Name": name, "Type": hive_type(kind, table, name)} for name, kind, *_ in described]


def _code(error: Exception) -> str:
    return getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _register(
    glue: Any, database: str, table: str, columns: list[dict[str, str]], location: str, as_of: str
) -> None:
    """Create the Glue table, or update it in place (same name, new columns and location)."""
    table_input = {
        "Name": table,
        "Description": COMMENTS[table],
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE", AS_OF_PARAMETER: as_of},
        "StorageDescriptor": {"Columns": columns, "Location": location, **PARQUET_FORMAT},
    }
    from botocore.exceptions import ClientError

    try:
        try:
            glue.update_table(DatabaseName=database, TableInput=table_input)
        except glue.exceptions.EntityNotFoundException:
            glue.create_table(DatabaseName=database, TableInput=table_input)
    except ClientError as error:
        raise MaskedCatalogError(
            f"INSTAREC_ANALYST_DATABASE {database}: cannot register table {table} ({_code(error)})"
        ) from None
