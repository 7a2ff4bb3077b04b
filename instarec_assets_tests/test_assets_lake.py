"""The raw and clean zones as Dagster assets, materialised for real partitions of a local lake."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import (
    PipelineError,
    assets_through,
    materialize_partition,
    register_batch,
)
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, TRAIN_LINES, write_batch

DAY_1 = "2025-01-06"


def run_partition(defs, instance, partition_key: str):
    """The lake zones only: the two-user fixture is too small to train a model on."""
    register_batch(instance, partition_key)
    return defs.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
        partition_key=partition_key,
        instance=instance,
        raise_on_error=False,
        asset_selection=assets_through(defs, "clean"),
    )


def test_landing_batch_materialises_raw_and_clean_with_lineage(defs, instance, locations: LakeLocations):
    write_batch(Path(locations.landing_partition_uri(DAY_1)))
    result = run_partition(defs, instance, DAY_1)
    assert result.success

    raw_orders = locations.partition_uri("raw", "raw_orders", DAY_1)
    assert raw_orders.endswith("raw/raw_orders/year=2025/month=01/day=06/raw_orders.parquet")
    rows = duckdb.sql(
        f"SELECT order_id, _source_file, _source_row FROM '{raw_orders}' ORDER BY _source_row"
    ).fetchall()
    assert [row[0] for row in rows] == [str(order[0]) for order in ORDERS]
    assert rows[0][1].endswith("2025-01-06/orders.csv") and rows[0][2] == 1

    clean_lines = locations.partition_uri("clean", "clean_order_products", DAY_1)
    counts = dict(duckdb.sql(f"SELECT eval_set, count(*) FROM '{clean_lines}' GROUP BY ALL").fetchall())
    assert counts == {"prior": len(PRIOR_LINES), "train": len(TRAIN_LINES)}

    materialization = instance.get_latest_materialization_event(
        AssetKey("clean_orders")
    ).asset_materialization
    assert materialization.metadata["dagster/row_count"].value == len(ORDERS)
    assert (
        materialization.metadata["row_accounting"].value
        == f"raw {len(ORDERS)} = clean {len(ORDERS)} + quarantined 0 + duplicates 0"
    )
    checks = {
        (evaluation.asset_key.to_user_string(), evaluation.check_name): evaluation.passed
        for evaluation in result.get_asset_check_evaluations()
    }
    assert checks[("clean_orders", "row_accounting")]
    assert checks[("clean_order_products", "clean_order_products_keys")]
    assert all(checks.values()), checks


DAY_2 = "2025-01-13"


def _lines(path: str) -> list[tuple]:
    return duckdb.sql(f"SELECT order_id, product_id, eval_set FROM '{path}' ORDER BY ALL").fetchall()


def test_second_batch_dedups_resent_orders_and_accepts_late_lines(defs, instance, locations: LakeLocations):
    landing = Path(locations.landing_uri())
    write_batch(landing / DAY_1)
    assert run_partition(defs, instance, DAY_1).success

    new_orders = [(204, 2, "prior", 4, 2, 10, "6.0"), (205, 2, "test", 5, 2, 11, "7.0")]
    resent = [ORDERS[0]]
    late_lines_of_test_order = [(203, 2, 1, 1), (203, 24852, 2, 0)]
    write_batch(
        landing / DAY_2,
        orders=resent + new_orders,
        prior_lines=[*late_lines_of_test_order, (204, 2, 1, 1)],
        train_lines=[],
    )
    result = run_partition(defs, instance, DAY_2)
    assert result.success

    day_2_orders = duckdb.sql(
        f"SELECT order_id FROM '{locations.partition_uri('clean', 'clean_orders', DAY_2)}' ORDER BY 1"
    ).fetchall()
    assert day_2_orders == [(204,), (205,)]
    orders_meta = instance.get_latest_materialization_event(
        AssetKey("clean_orders")
    ).asset_materialization.metadata
    assert orders_meta["duplicate_rows"].value == 1
    assert _lines(locations.partition_uri("clean", "clean_order_products", DAY_2)) == [
        (203, 2, "prior"),
        (203, 24852, "prior"),
        (204, 2, "prior"),
    ]


def test_rename_in_later_batch_closes_scd2_row(defs, instance, locations: LakeLocations):
    landing = Path(locations.landing_uri())
    write_batch(landing / DAY_1)
    assert run_partition(defs, instance, DAY_1).success
    folder = write_batch(landing / DAY_2, orders=[], prior_lines=[], train_lines=[])
    products = (
        (folder / "products.csv")
        .read_text()
        .replace("\n24852,Banana,24,4\n", "\n24852,Organic Banana,24,4\n")
    )
    (folder / "products.csv").write_text(products)
    assert run_partition(defs, instance, DAY_2).success

    versions = duckdb.sql(
        "SELECT product_name, valid_from::VARCHAR, valid_to::VARCHAR, is_current "
        f"FROM '{locations.partition_uri('clean', 'clean_products', DAY_2)}' WHERE product_id = 24852 ORDER BY valid_from"
    ).fetchall()
    assert versions == [("Banana", DAY_1, DAY_2, False), ("Organic Banana", DAY_2, None, True)]
    meta = instance.get_latest_materialization_event(
        AssetKey("clean_products")
    ).asset_materialization.metadata
    assert meta["clean_rows"].value == 1
    assert meta["duplicate_rows"].value == meta["raw_rows"].value - 1


def test_rematerialising_a_partition_gives_the_same_lake(defs, instance, locations: LakeLocations):
    write_batch(Path(locations.landing_uri()) / DAY_1)
    tables = ["clean_orders", "clean_order_products", "clean_products", "raw_orders"]

    def snapshot() -> dict[str, list]:
        return {
            table: duckdb.sql(
                f"SELECT * EXCLUDE (_ingested_at) FROM '{locations.partition_uri(locations.zone_of(table), table, DAY_1)}' ORDER BY ALL"
            ).fetchall()
            for table in tables
        }

    assert run_partition(defs, instance, DAY_1).success
    first = snapshot()
    assert run_partition(defs, instance, DAY_1).success
    assert snapshot() == first
    files = sorted(p.name for p in Path(locations.zone_uri("clean")).rglob("*") if p.is_file())
    assert (
        len(files) == len(set(files)) == 10
    )  # five clean tables and five quarantines, one file each, no leftovers


def repeat_a_stored_order(locations: LakeLocations) -> None:
    """Edit the stored first batch by hand so one order_id appears twice (what the key check catches)."""
    day_1_orders = locations.partition_uri("clean", "clean_orders", DAY_1)
    stored = f"read_parquet('{day_1_orders}', hive_partitioning = false)"
    duckdb.sql(
        f"COPY (SELECT * FROM {stored} UNION ALL (SELECT * FROM {stored} LIMIT 1)) TO '{day_1_orders}.new' (FORMAT parquet)"
    )
    Path(f"{day_1_orders}.new").replace(day_1_orders)


def land_over_a_repeated_order(defs, instance, locations: LakeLocations) -> None:
    """Batch 1 run and then edited to repeat an order; batch 2 landed (its run trips the key check)."""
    landing = Path(locations.landing_uri())
    write_batch(landing / DAY_1)
    assert run_partition(defs, instance, DAY_1).success
    repeat_a_stored_order(locations)
    write_batch(
        landing / DAY_2,
        orders=[(204, 2, "prior", 4, 2, 10, "6.0")],
        prior_lines=[(204, 2, 1, 1)],
        train_lines=[],
    )


def test_blocking_check_stops_downstream_when_stored_orders_repeat_a_key(
    defs, instance, locations: LakeLocations
):
    land_over_a_repeated_order(defs, instance, locations)
    result = run_partition(defs, instance, DAY_2)
    assert not result.success
    evaluations = {
        e.check_name: e.passed
        for e in result.get_asset_check_evaluations()
        if e.asset_key == AssetKey("clean_orders")
    }
    assert evaluations["clean_orders_key_unique"] is False
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "clean_orders" in materialized and "clean_order_products" not in materialized


def test_a_blocked_check_is_named_in_the_one_line_error(defs, instance, locations: LakeLocations):
    """The CLI's error names the failed check and its asset, not Dagster's multi-line summary."""
    land_over_a_repeated_order(defs, instance, locations)

    with pytest.raises(PipelineError) as raised:
        materialize_partition(defs, instance, DAY_2, through="clean")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("check clean_orders:clean_orders_key_unique failed")
    assert "blocking asset check" not in message
