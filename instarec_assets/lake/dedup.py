"""Duplicates within a file and across partitions: the same key with the same values is a duplicate;
the same key with different values is a conflict and goes to quarantine."""

from __future__ import annotations

import duckdb

CLASSIFY_SQL = """
CREATE OR REPLACE TEMP TABLE {out} AS
WITH ranked AS (
    SELECT *,
           hash({content}) AS _content_hash,
           row_number() OVER (PARTITION BY {key} ORDER BY _source_row) AS _key_rank,
           first_value(hash({content})) OVER (PARTITION BY {key} ORDER BY _source_row) AS _first_hash
    FROM {checked}
    WHERE quarantine_reason IS NULL
),
compared AS (
    SELECT ranked.*, hash({earlier_content}) AS _earlier_hash, earlier.{first_key} IS NOT NULL AS _stored_before
    FROM ranked
    LEFT JOIN {earlier} AS earlier USING ({key})
)
SELECT * EXCLUDE (_content_hash, _key_rank, _first_hash, _earlier_hash, _stored_before),
       CASE
         WHEN _stored_before AND _content_hash = _earlier_hash THEN 'duplicate'
         WHEN _stored_before THEN 'quarantined'
         WHEN _key_rank > 1 AND _content_hash = _first_hash THEN 'duplicate'
         WHEN _key_rank > 1 THEN 'quarantined'
         ELSE 'clean'
       END AS outcome,
       CASE
         WHEN _stored_before AND _content_hash <> _earlier_hash
           THEN '{key_label} already stored in an earlier partition with different values'
         WHEN NOT _stored_before AND _key_rank > 1 AND _content_hash <> _first_hash
           THEN '{key_label} appears more than once in this partition with different values'
       END AS conflict_reason
FROM compared
UNION ALL
SELECT *, 'quarantined' AS outcome, NULL AS conflict_reason
FROM {checked}
WHERE quarantine_reason IS NOT NULL
"""


def classify_duplicates(
    conn: duckdb.DuckDBPyConnection,
    checked_table: str,
    earlier_view: str,
    key_columns: tuple[str, ...],
    content_columns: tuple[str, ...],
    out_table: str,
) -> None:
    """Add `outcome` (clean / duplicate / quarantined) and `conflict_reason` to validated rows."""
    key = ", ".join(key_columns)
    conn.execute(
        CLASSIFY_SQL.format(
            out=out_table,
            checked=checked_table,
            earlier=earlier_view,
            key=key,
            first_key=key_columns[0],
            content=", ".join(content_columns),
            earlier_content=", ".join(f"earlier.{column}" for column in content_columns),
            key_label="/".join(key_columns),
        )
    )
