"""The quarantine tables: rows that could not be cleaned, each with the reason and the row as landed."""

from __future__ import annotations

from collections.abc import Sequence

QUARANTINE_SELECT = """
SELECT _source_file AS source_file,
       _source_row AS source_row,
       coalesce(quarantine_reason, conflict_reason) AS reason,
       coalesce(_record, {record}) AS record,
       _ingested_at AS ingested_at
FROM {classified}
WHERE outcome = 'quarantined'
ORDER BY _source_file, _source_row NULLS LAST
"""

QUARANTINE_SCHEMA = (
    ("source_file", "VARCHAR"),
    ("source_row", "BIGINT"),
    ("reason", "VARCHAR"),
    ("record", "VARCHAR"),
    ("ingested_at", "TIMESTAMP WITH TIME ZONE"),
)


def record_json_sql(columns: Sequence[str]) -> str:
    """The row's values as a JSON object string, so a quarantined row can be read and replayed."""
    fields = ", ".join(f'"{column}" := "{column}"' for column in columns)
    return f"to_json(struct_pack({fields}))::VARCHAR"


def checked_record_sql(columns: Sequence[str]) -> str:
    """What a failing raw row keeps: the unsplittable line itself, or its landed values as JSON."""
    return (
        "CASE WHEN _parse_error IS NOT NULL THEN _raw_line "
        f"WHEN quarantine_reason IS NOT NULL THEN {record_json_sql(columns)} END"
    )
