"""Duplicates within a file and across partitions: the same key with the same values is a duplicate;
the same key with different values is a conflict and goes to quarantine."""

from __future__ import annotations

import duckdb

# Only keys that occur more than once in the partition need ranking, and there are usually none or
# a handful: find them with one hash aggregate and run the window over their rows alone, rather than
# sorting every row (and every column) of the partition by key.
REPEATED_SQL = """
CREATE OR REPLACE TEMP TABLE {out}_repeated AS
SELECT {key}, {row_id},
       row_number() OVER by_key AS _key_rank,
       hash({content}) = first_value(hash({content})) OVER by_key AS _same_as_first
FROM {checked}
SEMI JOIN (
    SELECT {key} FROM {checked} WHERE quarantine_reason IS NULL GROUP BY {key} HAVING count(*) > 1
) USING ({key})
WHERE quarantine_reason IS NULL
WINDOW by_key AS (PARTITION BY {key} ORDER BY _source_row)
"""

# Joined with ON, not USING: Spark lists USING keys first in `checked.*`, and the UNION ALL below
# matches its two halves by position.
CLASSIFY_SQL = """
CREATE OR REPLACE TEMP {kind} {out} AS
WITH compared AS (
    SELECT checked.*,
           coalesce(repeated._key_rank, 1) AS _key_rank,
           repeated._same_as_first,
           hash({checked_content}) = hash({earlier_content}) AS _same_as_earlier,
           earlier.{first_key} IS NOT NULL AS _stored_before
    FROM {checked} AS checked
    LEFT JOIN {out}_repeated AS repeated ON {repeated_on}
    LEFT JOIN {earlier} AS earlier ON {earlier_on}
    WHERE checked.quarantine_reason IS NULL
)
SELECT * EXCLUDE (_key_rank, _same_as_first, _same_as_earlier, _stored_before),
       CASE
         WHEN _stored_before AND _same_as_earlier THEN 'duplicate'
         WHEN _stored_before THEN 'quarantined'
         WHEN _key_rank > 1 AND _same_as_first THEN 'duplicate'
         WHEN _key_rank > 1 THEN 'quarantined'
         ELSE 'clean'
       END AS outcome,
       CASE
         WHEN _stored_before AND NOT _same_as_earlier
           THEN '{key_label} already stored in an earlier partition with different values'
         WHEN NOT _stored_before AND _key_rank > 1 AND NOT _same_as_first
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
    row_id: tuple[str, ...] = ("_source_row",),
    as_view: bool = False,
) -> None:
    """Add `outcome` (clean / duplicate / quarantined) and `conflict_reason` to validated rows.

    row_id: columns that tell apart the rows of `checked_table` (the landed row number, plus the
    source where the table unions several files). as_view: define `out_table` as a view over
    `checked_table` instead of copying every row into a new table (for the largest tables, whose
    classification is read only a few times).
    """
    key = ", ".join(key_columns)
    content = ", ".join(content_columns)
    conn.execute(
        REPEATED_SQL.format(
            out=out_table, checked=checked_table, key=key, row_id=", ".join(row_id), content=content
        )
    )
    conn.execute(
        CLASSIFY_SQL.format(
            kind="VIEW" if as_view else "TABLE",
            out=out_table,
            checked=checked_table,
            earlier=earlier_view,
            repeated_on=_matching("checked", "repeated", (*key_columns, *row_id)),
            earlier_on=_matching("checked", "earlier", key_columns),
            first_key=key_columns[0],
            checked_content=", ".join(f"checked.{column}" for column in content_columns),
            earlier_content=", ".join(f"earlier.{column}" for column in content_columns),
            key_label="/".join(key_columns),
        )
    )


def _matching(left: str, right: str, columns: tuple[str, ...]) -> str:
    return " AND ".join(f"{left}.{column} = {right}.{column}" for column in columns)
