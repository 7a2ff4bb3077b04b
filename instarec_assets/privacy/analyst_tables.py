"""Forgetting a shopper in the analysts' masked tables on S3 (aws mode with INSTAREC_ANALYST_BUCKET).

Every batch's `analyst_masked_tables` run writes a complete snapshot folder per table and points Glue
at the newest, so the user's `user_key` rows sit in the current snapshot and in every older folder.
The current snapshot is republished in place from the already-rewritten clean zone with the
warehouse's own code (`publish_masked_tables`): filtering its files by `user_key` would leave the marts
counting the user, and a rebuild costs what one batch's run does. Each object is replaced by one PUT at
the location Glue already shows, so Athena never sees a missing location; then every other version
under the tables' prefixes (older snapshot folders, and the replaced bytes) is deleted by version id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow.parquet as pq

from instarec_assets.lake.duck import attach_filesystem
from instarec_assets.lake.locations import LakeLocations, partition_relpath
from instarec_assets.privacy.clean_zone import clean_zone_as_of
from instarec_assets.privacy.requests import Rewrite
from instarec_assets.warehouse.masked import (
    AS_OF_PARAMETER,
    MASKED_TABLES,
    catalog_as_of,
    publish_masked_tables,
)

REPUBLISHED = "analyst table"
DELETED = "analyst object deleted"
DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes


@dataclass(frozen=True)
class AnalystTables:
    """The analysts' bucket and Glue database, and a Glue client to update the tables with."""

    bucket: str
    database: str
    glue: Any


@dataclass(frozen=True)
class _Version:
    key: str
    version_id: str
    is_latest: bool
    is_marker: bool


def published_as_of(analyst: AnalystTables) -> str | None:
    """The newest batch any masked table points at (a run cut part-way may have moved some tables
    before `warehouse_info`); None when no table is registered. A missing database is an error."""
    newest = catalog_as_of(analyst.glue, analyst.database)
    for table in MASKED_TABLES:
        try:
            found = analyst.glue.get_table(DatabaseName=analyst.database, Name=table)["Table"]
        except analyst.glue.exceptions.EntityNotFoundException:
            continue
        as_of = found.get("Parameters", {}).get(AS_OF_PARAMETER)
        if as_of and (newest is None or as_of > newest):
            newest = as_of
    return newest


def holds_user(
    conn: duckdb.DuckDBPyConnection, locations: LakeLocations, analyst: AnalystTables, key: str
) -> bool:
    """Whether any current `orders` object of any snapshot folder has the user's `user_key`."""
    uris = [
        f"s3://{analyst.bucket}/{version.key}"
        for version in _versions(locations, analyst.bucket, "orders")
        if version.is_latest and not version.is_marker and version.key.endswith(".parquet")
    ]
    if not uris:
        return False
    attach_filesystem(conn, locations.filesystem)
    hits = conn.execute(
        "SELECT count(*) FROM read_parquet($uris, hive_partitioning = false) WHERE user_key = $key",
        {"uris": uris, "key": key},
    ).fetchall()[0][0]
    return hits > 0


def forget_in_analyst_tables(
    locations: LakeLocations, analyst: AnalystTables, salt: str, key: str, say: Callable[[str], None]
) -> list[Rewrite]:
    """Republish the current snapshot without the user, then delete every other version under the
    tables' prefixes; what was rewritten and deleted, for the audit record."""
    fs = locations.filesystem
    as_of = published_as_of(analyst)
    current = {table: partition_relpath(table, as_of) for table in MASKED_TABLES} if as_of else {}
    before: dict[str, int] = {}
    for table, key_of_table in current.items():
        if any(
            v.key == key_of_table and v.is_latest and not v.is_marker
            for v in _versions(locations, analyst.bucket, table)
        ):
            before[table] = _rows(fs, f"s3://{analyst.bucket}/{key_of_table}")
    rewrites: dict[str, Rewrite] = {}
    if as_of:
        say(f"analysts' masked tables: republishing the {as_of} snapshot from the rewritten clean zone")
        snapshot, quarantine = clean_zone_as_of(locations, as_of)
        conn = duckdb.connect()
        try:
            summary = publish_masked_tables(
                conn,
                snapshot,
                salt,
                as_of,
                bucket=analyst.bucket,
                database=analyst.database,
                filesystem=fs,
                glue=analyst.glue,
                scratch=locations.scratch_dir(),
                quarantine=quarantine,
            )
            if not summary.published:
                raise RuntimeError(
                    f"s3://{analyst.bucket}: the catalog moved to {summary.kept_as_of} during the forget; run it again"
                )
            left = conn.execute("SELECT count(*) FROM orders WHERE user_key = ?", [key]).fetchall()[0][0]
        finally:
            conn.close()
        if left:
            raise RuntimeError(
                f"s3://{analyst.bucket}: the republished orders still hold the user's user_key"
            )
        for relation in summary.relations:
            uri = f"s3://{analyst.bucket}/{current[relation.name]}"
            removed = max(before.get(relation.name, relation.rows) - relation.rows, 0)
            rewrites[current[relation.name]] = Rewrite(uri, REPUBLISHED, removed, relation.rows)
    # `orders` last: it is how a forget run again after stopping here finds the user's old folders.
    for table in sorted(MASKED_TABLES, key=lambda name: name == "orders"):
        rewrites.update(
            _delete_other_versions(locations, analyst.bucket, table, current.get(table), rewrites)
        )
    return list(rewrites.values())


def _delete_other_versions(
    locations: LakeLocations, bucket: str, table: str, keep: str | None, rewrites: dict[str, Rewrite]
) -> dict[str, Rewrite]:
    """Delete every version under `<table>/` but the current object `keep`; the changed audit entries."""
    fs = locations.filesystem
    doomed: dict[str, list[_Version]] = defaultdict(list)
    for version in _versions(locations, bucket, table):
        if version.key == keep and version.is_latest:
            continue
        doomed[version.key].append(version)
    changed: dict[str, Rewrite] = {}
    for object_key, versions in doomed.items():
        uri = f"s3://{bucket}/{object_key}"
        if object_key in rewrites:  # the republished object: its replaced bytes
            old = rewrites[object_key]
            changed[object_key] = Rewrite(
                old.target, old.kind, old.rows_removed, old.rows_kept, len(versions)
            )
            continue
        latest = next((v for v in versions if v.is_latest and not v.is_marker), None)
        rows = _rows(fs, uri) if latest is not None and object_key.endswith(".parquet") else 0
        older = len(versions) - (1 if latest is not None else 0)
        changed[object_key] = Rewrite(uri, DELETED, rows, 0, older)
    pending = [version for versions in doomed.values() for version in versions]
    for start in range(0, len(pending), DELETE_BATCH):
        chunk = pending[start : start + DELETE_BATCH]
        answer = fs.call_s3(
            "delete_objects",
            Bucket=bucket,
            Delete={"Objects": [{"Key": v.key, "VersionId": v.version_id} for v in chunk], "Quiet": True},
        )
        if answer.get("Errors"):
            error = answer["Errors"][0]
            raise RuntimeError(f"s3://{bucket}/{error['Key']}: cannot delete version ({error.get('Code')})")
    return changed


def _versions(locations: LakeLocations, bucket: str, table: str) -> list[_Version]:
    """Every version and delete marker under `<table>/` (the prefixes the forget role may list)."""
    fs = locations.filesystem
    found: list[_Version] = []
    markers: dict[str, str] = {}
    while True:
        page = fs.call_s3("list_object_versions", Bucket=bucket, Prefix=f"{table}/", **markers)
        for entry in page.get("Versions", []):
            found.append(_Version(entry["Key"], entry["VersionId"], entry["IsLatest"], False))
        for entry in page.get("DeleteMarkers", []):
            found.append(_Version(entry["Key"], entry["VersionId"], entry["IsLatest"], True))
        if not page.get("IsTruncated"):
            return found
        markers = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}


def _rows(fs: Any, uri: str) -> int:
    with fs.open(uri, "rb") as stream:
        return pq.ParquetFile(stream).metadata.num_rows
