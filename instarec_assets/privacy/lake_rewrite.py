"""Removing one user's rows from lake files: parquet partitions of every zone and the landing CSVs.

Each file is rewritten whole into local scratch and published in one step with the IO manager's
`publish` (a rename locally, one object put on S3), so a reader sees the old file or the new one.
On S3 the rewrite leaves the old bytes as a noncurrent version of a versioned bucket:
`delete_noncurrent_versions` removes every noncurrent version of the rewritten key (bypassing
governance-mode Object Lock retention, which only the forget role may do: infra/README.md).

A row is the user's when it names the user (`user_id`, a graph `node = 'user'` id, a quarantined
record's `user_id`, an unsplittable line's user field) or one of the user's orders (`order_id`).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.publish import publish
from instarec_assets.lake.schemas import ZONES
from instarec_assets.privacy.requests import Rewrite

# The user's orders, as DOUBLE so '42', ' 42' and '42.0' in raw text all match.
FORGET_ORDERS_TABLE = "forget_orders"
REWRITE_BATCH_ROWS = 200_000
ORDERS_TABLES = ("raw_orders", "clean_orders", "quarantined_orders")


def _number(expression: str) -> str:
    return f"TRY_CAST(trim(CAST({expression} AS VARCHAR), ' \"') AS DOUBLE)"


IN_USER_ORDERS = f"IN (SELECT order_id FROM {FORGET_ORDERS_TABLE})"
# DuckDB evaluates both branches of a CASE, so the JSON functions only ever see valid JSON.
JSON_RECORD = "CASE WHEN json_valid(record) THEN record END"
RECORD_USER = _number(f"json_extract_string({JSON_RECORD}, '$.user_id')")
RECORD_ORDER = _number(f"json_extract_string({JSON_RECORD}, '$.order_id')")


def _line_rule(line: str, table: str) -> str:
    """An unsplittable CSV line of orders (order_id, user_id, ...) or of order lines (order_id, ...)."""
    first = _number(f"split_part({line}, ',', 1)")
    second = _number(f"split_part({line}, ',', 2)")
    if "order_products" in table:
        return f"{first} {IN_USER_ORDERS}"
    if "orders" in table:
        return f"({second} = $user_id OR {first} {IN_USER_ORDERS})"
    return "false"


def match_sql(columns: Iterable[str], table: str) -> str | None:
    """A SQL condition true on the user's rows of a table with these columns; None if it has none."""
    names = set(columns)
    rules = []
    if "user_id" in names:
        rules.append(f"{_number('user_id')} = $user_id")
    if "order_id" in names:
        rules.append(f"{_number('order_id')} {IN_USER_ORDERS}")
    if {"node", "id"} <= names:  # GraphSAGE's training nodes: ('user', user_id) and ('product', ...)
        rules.append(f"(node = 'user' AND {_number('id')} = $user_id)")
    if "record" in names:  # a quarantined row: its JSON record, or the unsplittable line itself
        rules.append(
            f"CASE WHEN json_valid(record) THEN {RECORD_USER} = $user_id OR {RECORD_ORDER} {IN_USER_ORDERS} "
            f"ELSE {_line_rule('record', table)} END"
        )
    if "_raw_line" in names:
        rules.append(f"(_raw_line IS NOT NULL AND {_line_rule('_raw_line', table)})")
    if not rules:
        return None
    return " OR ".join(f"coalesce({rule}, false)" for rule in rules)


def lake_parquet_files(locations: LakeLocations) -> list[str]:
    """Every parquet file of every zone (partitions and files inside model folders), once each."""
    fs = locations.filesystem
    fs.invalidate_cache()
    found: dict[str, str] = {}
    for zone in ZONES:
        root = locations.zone_uri(zone)
        if not fs.exists(root):
            continue
        for path in fs.find(root):
            name = path.rsplit("/", 1)[-1]
            if not name.endswith(".parquet") or name.startswith("."):
                continue
            if locations.is_aws:
                found[f"s3://{path}"] = f"s3://{path}"
            else:
                found.setdefault(os.path.realpath(path), path)
    return sorted(found.values())


def table_of(uri: str) -> str:
    return uri.rsplit("/", 1)[-1].removesuffix(".parquet")


def user_order_ids(conn: duckdb.DuckDBPyConnection, locations: LakeLocations, user_id: int) -> list[float]:
    """The user's order ids from every orders table and landing `orders.csv`, into `forget_orders`."""
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {FORGET_ORDERS_TABLE} (order_id DOUBLE)")
    for uri in lake_parquet_files(locations):
        table = table_of(uri)
        if table not in ORDERS_TABLES:
            continue
        if table == "quarantined_orders":
            order, where = RECORD_ORDER, f"json_valid(record) AND {RECORD_USER} = $user_id"
        else:
            order, where = _number("order_id"), f"{_number('user_id')} = $user_id"
        conn.execute(
            f"INSERT INTO {FORGET_ORDERS_TABLE} SELECT DISTINCT {order} "
            f"FROM read_parquet($uri, hive_partitioning = false) WHERE {where} AND {order} IS NOT NULL",
            {"uri": uri, "user_id": user_id},
        )
        if table == "raw_orders":  # unsplittable lines whose second field is the user
            line_user = _number("split_part(_raw_line, ',', 2)")
            line_order = _number("split_part(_raw_line, ',', 1)")
            conn.execute(
                f"INSERT INTO {FORGET_ORDERS_TABLE} SELECT {line_order} "
                f"FROM read_parquet($uri, hive_partitioning = false) WHERE _raw_line IS NOT NULL "
                f"AND {line_user} = $user_id",
                {"uri": uri, "user_id": user_id},
            )
    for uri in landing_files(locations, "orders"):
        for order_id in csv_user_orders(locations, uri, user_id):
            conn.execute(f"INSERT INTO {FORGET_ORDERS_TABLE} VALUES (?)", [order_id])
    rows = conn.execute(f"SELECT DISTINCT order_id FROM {FORGET_ORDERS_TABLE} ORDER BY 1").fetchall()
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {FORGET_ORDERS_TABLE} AS SELECT DISTINCT order_id FROM {FORGET_ORDERS_TABLE}"
    )
    return [row[0] for row in rows]


def rewrite_parquet(
    conn: duckdb.DuckDBPyConnection, locations: LakeLocations, uri: str, user_id: int
) -> Rewrite | None:
    """Remove the user's rows from one parquet file; None when it holds none (left untouched)."""
    with locations.filesystem.open(uri, "rb") as stream:
        schema = pq.read_schema(stream)
    where = match_sql(schema.names, table_of(uri))
    if where is None:
        return None
    params = {"uri": uri, **({"user_id": user_id} if "$user_id" in where else {})}
    source = "read_parquet($uri, hive_partitioning = false)"
    total, hits = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {where}) FROM {source}", params
    ).fetchall()[0]
    if not hits:
        return None
    staged = staged_path(locations.scratch_dir(), uri.rsplit("/", 1)[-1])
    # Written by pyarrow with the file's own schema (types, nullability, metadata), so the rewritten
    # partition passes the same schema checks and readers as the original.
    reader = conn.sql(f"SELECT * FROM {source} WHERE NOT ({where})", params=params).to_arrow_reader(
        REWRITE_BATCH_ROWS
    )
    with pq.ParquetWriter(staged, schema, compression="zstd") as writer:
        for batch in reader:
            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    kept = pq.ParquetFile(staged).metadata.num_rows
    if kept != total - hits:
        raise RuntimeError(f"{uri}: rewrite kept {kept} rows, expected {total - hits}; file left as it was")
    publish(staged, UPath(uri, **locations.storage_options()))
    return Rewrite(uri, "parquet", int(hits), kept, delete_noncurrent_versions(locations, uri))


# Landing files that hold a user's rows, and the column that links a line to the user.
LANDING_KEYS = {
    "orders": "user_id",
    "order_products__prior": "order_id",
    "order_products__train": "order_id",
}


def landing_files(locations: LakeLocations, stem: str) -> list[str]:
    """`<stem>.csv` or `<stem>.csv.gz` of every landing batch."""
    fs = locations.filesystem
    root = locations.landing_uri()
    fs.invalidate_cache()
    if not fs.exists(root):
        return []
    found = []
    for batch in sorted(locations.landing_batches()):
        for name in (f"{stem}.csv", f"{stem}.csv.gz"):
            uri = f"{root}/{batch}/{name}"
            if fs.exists(uri):
                found.append(uri)
    return found


def _fields(line: str) -> list[str]:
    if '"' not in line:
        return line.rstrip("\r\n").split(",")
    return next(csv.reader([line]), [])


def _as_number(value: str) -> float | None:
    try:
        return float(value.strip().strip('"'))
    except ValueError:
        return None


def _lines(locations: LakeLocations, uri: str) -> Iterable[str]:
    with locations.filesystem.open(uri, "rb", compression="gzip" if uri.endswith(".gz") else None) as raw:
        yield from io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def csv_user_orders(locations: LakeLocations, uri: str, user_id: int) -> list[float]:
    """The order ids of the user's lines in a landing `orders.csv`."""
    lines = iter(_lines(locations, uri))
    header = [name.strip().strip('"') for name in _fields(next(lines, ""))]
    if "user_id" not in header or "order_id" not in header:
        return []
    user_at, order_at = header.index("user_id"), header.index("order_id")
    needle = str(user_id)
    found = []
    for line in lines:
        if needle not in line:
            continue
        fields = _fields(line)
        if len(fields) > max(user_at, order_at) and _as_number(fields[user_at]) == user_id:
            order = _as_number(fields[order_at])
            if order is not None:
                found.append(order)
    return found


def rewrite_landing_csv(
    locations: LakeLocations, uri: str, key_column: str, keys: set[float]
) -> Rewrite | None:
    """Drop the lines whose `key_column` is one of `keys`, every other line kept byte for byte."""
    if not keys:
        return None
    needles = {str(int(key)) if float(key).is_integer() else str(key) for key in keys}
    lines = iter(_lines(locations, uri))
    header_line = next(lines, "")
    header = [name.strip().strip('"') for name in _fields(header_line)]
    if key_column not in header:
        return None
    at = header.index(key_column)
    staged = staged_path(locations.scratch_dir(), uri.rsplit("/", 1)[-1])
    removed = kept = 0
    opener = gzip.open if uri.endswith(".gz") else open
    with opener(staged, "wt", encoding="utf-8", newline="") as out:
        out.write(header_line)
        for line in lines:
            if any(needle in line for needle in needles):
                fields = _fields(line)
                if len(fields) > at and _as_number(fields[at]) in keys:
                    removed += 1
                    continue
            kept += 1
            out.write(line)
    if not removed:
        staged.unlink()
        staged.parent.rmdir()
        return None
    publish(staged, UPath(uri, **locations.storage_options()))
    return Rewrite(uri, "landing csv", removed, kept, delete_noncurrent_versions(locations, uri))


def delete_noncurrent_versions(locations: LakeLocations, uri: str) -> int:
    """On S3, delete every noncurrent version of a rewritten object (they hold the removed rows).

    BypassGovernanceRetention lets the forget role remove versions under governance-mode Object
    Lock; a bucket without versioning has none. Locally there are no versions: 0.
    """
    if not locations.is_aws:
        return 0
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    fs = locations.filesystem
    deleted = 0
    markers: dict[str, str] = {}
    while True:
        page = fs.call_s3("list_object_versions", Bucket=bucket, Prefix=key, **markers)
        for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if version["Key"] != key or version.get("IsLatest"):
                continue
            fs.call_s3(
                "delete_object",
                Bucket=bucket,
                Key=key,
                VersionId=version["VersionId"],
                BypassGovernanceRetention=True,
            )
            deleted += 1
        if not page.get("IsTruncated"):
            return deleted
        markers = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}


def staged_path(scratch: Path, name: str) -> Path:
    path = scratch / f"forget-{uuid.uuid4().hex}" / name
    path.parent.mkdir(parents=True)
    return path
