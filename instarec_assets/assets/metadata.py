"""Metadata shared by the zone assets: previews, accounting tables, quarantine summaries."""

from __future__ import annotations

import duckdb
from dagster import MetadataValue

from instarec_assets.lake.accounting import RowAccounting
from instarec_assets.lake.locations import PARTITION_DIR_PATTERN

PREVIEW_ROWS = 5


def preview(
    conn: duckdb.DuckDBPyConnection, parquet_path: str, rows: int = PREVIEW_ROWS, source: str | None = None
) -> MetadataValue:
    """The first rows of a staged file (or of a SQL table `source`, a resolved feature table) as a
    markdown table."""
    if source is None:
        frame = conn.execute(
            "SELECT * FROM read_parquet(?, hive_partitioning = false) LIMIT ?", [parquet_path, rows]
        ).df()
    else:
        frame = conn.execute(f"SELECT * FROM {source} LIMIT ?", [rows]).df()
    return MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "_no rows_")


def rows_by_eval_set(
    conn: duckdb.DuckDBPyConnection, source: str, label_rate: bool = False
) -> dict[str, MetadataValue]:
    """`<eval_set>_rows` per framing of a feature set (a SQL table: feature_delta.feature_source), the
    figures to hold against Kaggle's sizes, and `resolved_rows`; with `label_rate`, the share of
    labelled rows that are 1. One pass: a delta's resolved set is a join."""
    label = "sum(label)::BIGINT, count(label)" if label_rate else "0, 0"
    counts = conn.execute(
        f"SELECT eval_set, count(*), {label} FROM {source} GROUP BY eval_set ORDER BY eval_set"
    ).fetchall()
    metadata = {f"{eval_set}_rows": MetadataValue.int(rows) for eval_set, rows, _, _ in counts}
    metadata["resolved_rows"] = MetadataValue.int(sum(rows for _, rows, _, _ in counts))
    if label_rate:
        ones, labelled = sum(row[2] or 0 for row in counts), sum(row[3] for row in counts)
        metadata["label_rate"] = MetadataValue.float(ones / labelled if labelled else 0.0)
    return metadata


def accounting_metadata(accounting: RowAccounting) -> dict[str, MetadataValue]:
    """raw = clean + quarantined + duplicates, as numbers and as a one-line statement."""
    return {
        "raw_rows": MetadataValue.int(accounting.raw_rows),
        "clean_rows": MetadataValue.int(accounting.clean_rows),
        "quarantined_rows": MetadataValue.int(accounting.quarantined_rows),
        "duplicate_rows": MetadataValue.int(accounting.duplicate_rows),
        "row_accounting": MetadataValue.text(accounting.describe()),
    }


def quarantine_reasons(
    conn: duckdb.DuckDBPyConnection, quarantine_path: str, limit: int = 10
) -> MetadataValue:
    """The most common quarantine reasons, so a bad batch explains itself in the UI."""
    frame = conn.execute(
        "SELECT reason, count(*) AS rows FROM read_parquet(?, hive_partitioning = false) GROUP BY reason ORDER BY rows DESC, reason LIMIT ?",
        [quarantine_path, limit],
    ).df()
    return MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "_nothing quarantined_")


def history_read(**uris_by_table: list[str]) -> MetadataValue:
    """The batches each history input supplied, by table: what this materialisation read."""
    return MetadataValue.json(
        {
            table: ["-".join(match.groups()) for uri in uris if (match := PARTITION_DIR_PATTERN.search(uri))]
            for table, uris in uris_by_table.items()
        }
    )
