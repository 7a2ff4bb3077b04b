"""Row accounting: every raw row ends up clean, quarantined or recognised as a duplicate."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import duckdb

from instarec_assets.lake.duck import StagedParquet

# The blocking asset check of every clean table (assets/clean.py; the Spark clean job reports it too).
ROW_ACCOUNTING_CHECK = "row_accounting"


@dataclass(frozen=True)
class RowAccounting:
    """Counts for one table and partition; `balanced` is the invariant the asset check enforces."""

    raw_rows: int
    clean_rows: int
    quarantined_rows: int
    duplicate_rows: int

    @property
    def balanced(self) -> bool:
        return self.raw_rows == self.clean_rows + self.quarantined_rows + self.duplicate_rows

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"raw {self.raw_rows} = clean {self.clean_rows} + quarantined {self.quarantined_rows}"
            f" + duplicates {self.duplicate_rows}"
        )


@dataclass(frozen=True)
class CleanResult:
    """A clean table and its quarantine, staged, with the accounting that ties them to raw."""

    clean: StagedParquet
    quarantine: StagedParquet
    accounting: RowAccounting
    outcome_counts: dict[str, int]


def outcome_counts(conn: duckdb.DuckDBPyConnection, classified_table: str) -> dict[str, int]:
    """Rows per outcome ('clean', 'quarantined', 'duplicate', ...) of a classified temp table."""
    rows = conn.execute(f"SELECT outcome, count(*) FROM {classified_table} GROUP BY outcome").fetchall()
    return {outcome: int(count) for outcome, count in rows}
