"""What is in the lake: partitions and row counts per zone table, read from parquet footers."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.schemas import ZONES


@dataclass(frozen=True)
class TableStatus:
    zone: str
    table: str
    rows_by_partition: dict[str, int]

    def describe(self) -> str:
        keys = list(self.rows_by_partition)
        span = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
        latest = self.rows_by_partition[keys[-1]]
        return (
            f"{self.zone:<12} {self.table:<30} {len(keys):>3} partition(s) {span:<22} "
            f"latest {latest:>12,} rows  all {sum(self.rows_by_partition.values()):>12,} rows"
        )


def lake_status(locations: LakeLocations) -> list[TableStatus]:
    """Every zone table with rows; a zone bucket that is missing or unreadable is an error in aws
    mode (not an empty lake), since it usually means a wrong bucket variable or missing access."""
    fs = locations.filesystem
    statuses = []
    for zone in ZONES:
        root = locations.zone_uri(zone)
        if not fs.exists(root):
            if locations.is_aws:
                raise ValueError(
                    f"{root} (INSTAREC_{zone.upper()}_BUCKET, the {zone} zone) does not exist "
                    "or cannot be read with these credentials"
                )
            continue
        fs.invalidate_cache()
        for entry in sorted(fs.ls(root, detail=False)):
            table = entry.rstrip("/").rsplit("/", 1)[-1]
            partitions = locations.partitions(zone, table)
            if not partitions:
                continue
            rows = {}
            for key, uri in partitions.items():
                with fs.open(uri, "rb") as stream:
                    rows[key] = pq.ParquetFile(stream).metadata.num_rows
            statuses.append(TableStatus(zone, table, rows))
    return statuses
