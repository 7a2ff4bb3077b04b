"""The clean zone as of one batch, listed from storage: what the forget procedure rebuilds the local
warehouse and republishes the analysts' masked tables from, after rewriting the lake."""

from __future__ import annotations

from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.locations import LakeLocations

QUARANTINED_TABLES = ("orders", "order_products", "products", "aisles", "departments")


def clean_zone_as_of(locations: LakeLocations, as_of: str) -> tuple[CleanSnapshot, dict[str, list[str]]]:
    """The clean snapshot and quarantined files the warehouse of batch `as_of` is built from, listed
    from storage (the forget job rewrites the lake outside any landing run)."""

    def upto(table: str) -> list[str]:
        zone = LakeLocations.zone_of(table)
        return [uri for batch, uri in locations.partitions(zone, table).items() if batch <= as_of]

    def at(table: str) -> str:
        partitions = locations.partitions("clean", table)
        if as_of not in partitions:
            raise ValueError(f"{table}: no clean partition {as_of} to rebuild the warehouse from")
        return partitions[as_of]

    snapshot = CleanSnapshot(
        orders=upto("clean_orders"),
        order_products=upto("clean_order_products"),
        products=at("clean_products"),
        aisles=at("clean_aisles"),
        departments=at("clean_departments"),
    )
    quarantine = {table: upto(f"quarantined_{table}") for table in QUARANTINED_TABLES}
    return snapshot, quarantine
