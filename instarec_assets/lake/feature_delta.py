"""Feature tables stored as a base snapshot plus per-batch deltas, and the one resolver every reader uses.

A kept-models batch changes only the rows of its affected users (user_features, user_product_features
and their training_set / inference_set rows) and of its touched products (product_features). Writing
whole tables every batch made the rewrite, not the aggregates, most of the curated step's cost, so a
batch's partition file of a feature table is one of:

- a **base**: the whole table, as a full build (or a compaction) writes it; no delta metadata;
- a **delta**: the batch's new rows of every superseded key, plus one tombstone row per superseded key
  (`_superseded` true, only the key column set), with footer metadata `instarec.feature_delta`
  naming the table, the batch and the chain of earlier files (batches, base first).

The live rows of a chain: a row of file i (base = 0) is live unless a later file supersedes its key.
Keys: user_id for the user-keyed tables (an affected user's rows are all replaced, including rows that
disappear: a user whose target moved from `train` to `test` leaves training_set), product_id for
product_features (a touched product's rows of both framings).

Set deltas leave out the product columns: a touched product changes those columns in every set row that
holds it (most rows, as a weekly batch touches most products), so the resolver takes them from the same
batch's resolved product_features, with the inner join the full build uses (sets.py).

Each file is an ordinary parquet file with a user_id (or product_id) column, so forgetting a user
(privacy/lake_rewrite.py) removes their rows and tombstones from every file of every chain; the
rewrite keeps the footer metadata, and the chain resolves to the table without the user.

`feature_source` returns a SQL table expression for a stored (or staged) feature table: the plain
`read_parquet(...)` for a base, the resolving query for a delta. Rows carry no order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from instarec_assets.lake.duck import StagedParquet, scalar
from instarec_assets.lake.locations import partition_relpath

DELTA_METADATA = "instarec.feature_delta"
SUPERSEDED = "_superseded"
_SEQ = "_chain_seq"

# The key a delta supersedes, per feature table.
TABLE_KEYS: dict[str, str] = {
    "user_features": "user_id",
    "product_features": "product_id",
    "user_product_features": "user_id",
    "training_set": "user_id",
    "inference_set": "user_id",
}
SET_TABLES = ("training_set", "inference_set")


def set_framing(alias: str) -> str:
    """SQL: the framing of a feature-set row (`alias`: the set's table alias) whose level rows
    (product_features, embeddings) it reads: `test` and `train` rows the target framing's,
    `train_earlier` rows (features/targets.py) the earlier framing's, `serving` rows the serving one's."""
    return (
        f"CASE {alias}.eval_set WHEN 'serving' THEN 'serving' WHEN 'train_earlier' THEN 'earlier' "
        "ELSE 'target' END"
    )


# (table, batch) -> the URI of that table's file of that batch.
Locate = Callable[[str, str], str]


@dataclass(frozen=True)
class DeltaInfo:
    """A delta file's footer: its table, batch, the earlier files of its chain (base first) and, for a
    set, the product columns it leaves to product_features."""

    table: str
    batch: str
    chain: tuple[str, ...]
    product_columns: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "table": self.table,
                "batch": self.batch,
                "chain": list(self.chain),
                "product_columns": list(self.product_columns),
            }
        )

    @property
    def deltas(self) -> int:
        """How many deltas the chain holds up to and including this one."""
        return len(self.chain)


def delta_info(conn: duckdb.DuckDBPyConnection, uri: str) -> DeltaInfo | None:
    """The file's delta footer, or None for a base (or any plain parquet file). A connection that
    reads footers itself (SparkConnection) is asked directly."""
    read_footer = getattr(conn, "parquet_kv_metadata", None)
    if read_footer is not None:
        value = read_footer(str(uri)).get(DELTA_METADATA)
    else:
        value = scalar(
            conn,
            "SELECT decode(value) FROM parquet_kv_metadata(?) WHERE decode(key) = ?",
            [str(uri), DELTA_METADATA],
        )
    if value is None:
        return None
    data = json.loads(value)
    return DeltaInfo(
        table=data["table"],
        batch=data["batch"],
        chain=tuple(data["chain"]),
        product_columns=tuple(data.get("product_columns", ())),
    )


def lake_locate(uri: str, table: str, batch: str) -> Locate:
    """Locate for a file stored in the lake layout (`<zone>/<table>/year=/month=/day=/<table>.parquet`):
    its siblings of other tables and batches under the same zone."""
    own = partition_relpath(table, batch)
    text = str(uri)
    if not text.endswith(own):
        raise ValueError(f"{uri}: a {table} delta of batch {batch} outside the lake layout; pass `locate`")
    root = text[: -len(own)]
    return lambda other_table, other_batch: root + partition_relpath(other_table, other_batch)


def feature_source(conn: duckdb.DuckDBPyConnection, uri: str | Path, locate: Locate | None = None) -> str:
    """A SQL table expression with the rows of a feature table, whichever way it is stored: use it
    where a reader would write `read_parquet(uri)`. `locate` finds the other files of the chain
    (default: the lake layout around `uri`; a step that reads its own staged files passes its own)."""
    uri = str(uri)
    info = delta_info(conn, uri)
    if info is None:
        return f"read_parquet({_literal(uri)}, hive_partitioning = false)"
    locate = locate or lake_locate(uri, info.table, info.batch)
    files = [locate(info.table, batch) for batch in info.chain] + [uri]
    _check_chain(conn, files, info)
    key = TABLE_KEYS[info.table]
    columns = [
        row[0]
        for row in conn.execute(
            f"DESCRIBE SELECT * FROM read_parquet({_literal(files[0])}, hive_partitioning = false)"
        ).fetchall()
    ]
    rows = " UNION ALL BY NAME ".join(
        f"SELECT *, {seq} AS {_SEQ} FROM read_parquet({_literal(file)}, hive_partitioning = false)"
        + (f" WHERE NOT {SUPERSEDED}" if seq else "")
        for seq, file in enumerate(files)
    )
    tombstones = " UNION ALL ".join(
        f"SELECT {key}, {seq} AS seq FROM read_parquet({_literal(file)}, hive_partitioning = false)"
        f" WHERE {SUPERSEDED}"
        for seq, file in enumerate(files)
        if seq
    )
    product_join = ""
    product_columns = set(info.product_columns)
    if product_columns:
        products = feature_source(conn, locate("product_features", info.batch), locate)
        product_join = (
            f" JOIN {products} AS p ON p.framing = {set_framing('r')} AND p.product_id = r.product_id"
        )
    select = ", ".join(f'p."{name}"' if name in product_columns else f'r."{name}"' for name in columns)
    return (
        f"(SELECT {select} FROM ({rows}) AS r"
        f" LEFT JOIN (SELECT {key}, max(seq) AS seq FROM ({tombstones}) GROUP BY {key}) AS t"
        f" ON t.{key} = r.{key}{product_join}"
        f" WHERE t.seq IS NULL OR t.seq <= r.{_SEQ})"
    )


def with_feature_tables(
    conn: duckdb.DuckDBPyConnection, sql: str, params: dict, *names: str
) -> tuple[str, dict]:
    """`sql` with each `read_parquet($name, hive_partitioning = false)` of the named parameters (feature
    table URIs) replaced by the resolved table, and the parameters it no longer uses."""
    params = dict(params)
    for name in names:
        placeholder = f"read_parquet(${name}, hive_partitioning = false)"
        if placeholder not in sql:
            raise ValueError(f"the query reads no feature table ${name}")
        sql = sql.replace(placeholder, feature_source(conn, params.pop(name)))
    return sql, params


def chain_after(conn: duckdb.DuckDBPyConnection, previous_uri: str, previous_batch: str) -> tuple[str, ...]:
    """The chain a delta written on top of `previous_uri` (the batch before's file) will carry."""
    info = delta_info(conn, previous_uri)
    return (previous_batch,) if info is None else (*info.chain, info.batch)


def write_delta(
    conn: duckdb.DuckDBPyConnection,
    rows_sql: str,
    superseded_sql: str,
    info: DeltaInfo,
    path: Path,
    params: dict | None = None,
) -> StagedParquet:
    """Stage a delta: `rows_sql`'s rows, then a tombstone per key of `superseded_sql` (one column)."""
    key = TABLE_KEYS[info.table]
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = info.to_json().replace("'", "''")
    sql = (
        f"COPY (SELECT *, false AS {SUPERSEDED} FROM ({rows_sql})"
        f" UNION ALL BY NAME SELECT DISTINCT {key}, true AS {SUPERSEDED} FROM ({superseded_sql}))"
        f" TO {_literal(str(path))} (FORMAT parquet, COMPRESSION zstd,"
        f" KV_METADATA {{'{DELTA_METADATA}': '{metadata}'}})"
    )
    if params:
        conn.execute(sql, params)
    else:
        conn.execute(sql)
    count = scalar(conn, "SELECT count(*) FROM read_parquet(?, hive_partitioning = false)", [str(path)])
    return StagedParquet(path=path, row_count=int(count))


def resolved_rows(conn: duckdb.DuckDBPyConnection, uri: str | Path, locate: Locate | None = None) -> int:
    """How many rows the resolved table has."""
    return int(scalar(conn, f"SELECT count(*) FROM {feature_source(conn, uri, locate)}"))


def _check_chain(conn: duckdb.DuckDBPyConnection, files: Sequence[str], info: DeltaInfo) -> None:
    """Every earlier file is the one the delta was written on: the base is a base and each delta names
    the same chain up to it (a partition rematerialized since would not)."""
    for position, file in enumerate(files[:-1]):
        found = delta_info(conn, file)
        expected = info.chain[:position]
        if position == 0:
            ok = found is None
        else:
            ok = found is not None and (found.table, found.batch, found.chain) == (
                info.table,
                info.chain[position],
                expected,
            )
        if not ok:
            raise ValueError(
                f"{files[-1]}: its delta chain no longer matches {file} (rematerialized since?); "
                "rebuild the features of this batch with full_recompute"
            )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
