"""The analyst_warehouse asset, materialised by the landing job after the real raw and clean assets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions

from instarec_assets.assets.curated import CLEAN_SNAPSHOT_INS
from instarec_assets.assets.warehouse import (
    warehouse_duckdb_resource,
)
from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import assets_through, land_folder, register_batch
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets.warehouse import published_as_of, run_readonly_sql, user_key, warehouse_path
from instarec_assets.warehouse.salt import SALT_ENV, salt_path
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, TRAIN_LINES, write_batch
from instarec_assets_tests.test_warehouse_incremental import warehouse_contents

DAY_1 = "2025-01-06"
DAY_2 = "2025-01-13"
WAREHOUSE = AssetKey("analyst_warehouse")


def run_partition(defs: Definitions, instance, partition_key: str, full_rebuild: bool = False):
    """Raw, clean and the warehouse (the two-user fixture is too small for the model assets)."""
    register_batch(instance, partition_key)
    return defs.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
        partition_key=partition_key,
        instance=instance,
        raise_on_error=False,
        asset_selection=[*assets_through(defs, "clean"), WAREHOUSE],
        run_config={"ops": {"analyst_warehouse": {"config": {"full_rebuild": full_rebuild}}}},
    )


def latest_metadata(instance) -> dict:
    event = instance.get_latest_materialization_event(WAREHOUSE)
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def rows(locations: LakeLocations, sql: str) -> list[tuple]:
    return run_readonly_sql(warehouse_path(locations.home_path), sql).rows


def test_the_asset_sits_in_consumption_after_every_clean_table(defs, locations):
    graph = defs.resolve_asset_graph()
    node = graph.get(WAREHOUSE)
    assert node.group_name == "consumption" and node.kinds == {"duckdb"} and node.description
    assert node.partitions_def is not None
    assert {key.to_user_string() for key in node.parent_keys} == set(CLEAN_SNAPSHOT_INS) | {
        f"quarantined_{table}" for table in ("orders", "order_products", "products", "aisles", "departments")
    }
    resource = warehouse_duckdb_resource(locations)
    assert resource.database == str(locations.home_path / "warehouse" / "analyst.duckdb")
    assert resource.connection_config["autoinstall_known_extensions"] is False


def test_materialising_a_partition_publishes_the_warehouse_with_a_salted_user_key(
    defs, instance, locations, monkeypatch
):
    monkeypatch.delenv(SALT_ENV, raising=False)
    write_batch(Path(locations.landing_partition_uri(DAY_1)))
    result = run_partition(defs, instance, DAY_1)
    assert result.success

    metadata = latest_metadata(instance)
    path = warehouse_path(locations.home_path)
    assert metadata["published"] is True and metadata["as_of"] == DAY_1
    assert metadata["path"] == str(path)
    assert metadata["dagster/row_count"] == len(PRIOR_LINES) + len(TRAIN_LINES)
    assert "| `joined_order_products` | view | 11 |" in metadata["relations"]
    assert "| `orders` | table | 7 |" in metadata["relations"]
    assert "| `quarantine` | table | 0 |" in metadata["relations"]  # a clean batch
    assert "Banana" in metadata["mart_top_products_preview"]
    assert metadata["user_key_salt"] == f"file {salt_path(locations.home_path)}"

    assert rows(
        locations,
        "SELECT product_name, aisle, department FROM joined_order_products "
        "WHERE order_id = 101 ORDER BY add_to_cart_order",
    ) == [("Banana", "fresh fruits", "produce"), ("Bag of Organic Bananas", "fresh fruits", "produce")]
    assert rows(locations, "SELECT product_id, orders, reorders FROM mart_top_products LIMIT 1") == [
        (24852, 4, 3)
    ]

    salt = salt_path(locations.home_path).read_text().strip()
    assert stat.S_IMODE(salt_path(locations.home_path).stat().st_mode) == 0o600
    keys = dict(rows(locations, "SELECT order_id, user_key FROM orders"))
    assert keys == {order[0]: user_key(order[1], salt) for order in ORDERS}
    assert salt.encode() not in path.read_bytes()
    assert salt not in str(metadata)


def test_a_later_partition_updates_the_warehouse_like_a_rebuild_and_a_backfill_keeps_it(
    defs, instance, locations, monkeypatch
):
    monkeypatch.setenv(SALT_ENV, "salt-from-the-environment-0123")
    landing = Path(locations.landing_uri())
    write_batch(landing / DAY_1)
    assert run_partition(defs, instance, DAY_1).success
    assert latest_metadata(instance)["full_reason"] == "first batch"
    # A new order of user 1 and a quarantined one, with a renamed product.
    folder = write_batch(
        landing / DAY_2,
        orders=[(105, 1, "test", 5, 2, 9, "6.0"), (106, "u77321", "prior", 1, 2, 8, "")],
        prior_lines=[],
        train_lines=[],
    )
    products = (
        (folder / "products.csv")
        .read_text()
        .replace("\n24852,Banana,24,4\n", "\n24852,Organic Banana,24,4\n")
    )
    (folder / "products.csv").write_text(products)
    assert run_partition(defs, instance, DAY_2).success
    assert latest_metadata(instance)["mode"] == "incremental"

    assert published_as_of(warehouse_path(locations.home_path)) == DAY_2
    assert rows(locations, "SELECT product_name FROM products WHERE product_id = 24852") == [
        ("Organic Banana",)
    ]
    assert rows(
        locations, "SELECT DISTINCT product_name FROM joined_order_products WHERE product_id = 24852"
    ) == [("Organic Banana",)]
    assert rows(locations, "SELECT count(*) FROM product_history WHERE product_id = 24852") == [(2,)]
    assert rows(locations, "SELECT count(*), count(DISTINCT user_key) FROM orders") == [(len(ORDERS) + 1, 2)]
    assert rows(locations, "SELECT batch, reason FROM quarantine") == [
        (DAY_2, "user_id: not a number: '<masked>'")
    ]
    assert latest_metadata(instance)["user_key_salt"] == f"environment variable {SALT_ENV}"

    updated = warehouse_contents(warehouse_path(locations.home_path))
    assert run_partition(defs, instance, DAY_2, full_rebuild=True).success
    assert latest_metadata(instance)["full_reason"] == "asked (full_rebuild)"
    assert warehouse_contents(warehouse_path(locations.home_path)) == updated

    assert run_partition(defs, instance, DAY_1).success
    metadata = latest_metadata(instance)
    assert metadata["published"] is False
    assert metadata["kept"] == f"the published warehouse is as of {DAY_2}, newer than {DAY_1}: kept it"
    assert published_as_of(warehouse_path(locations.home_path)) == DAY_2


@pytest.mark.aws
def test_aws_mode_copies_the_s3_clean_zone_into_a_local_warehouse(aws_locations: LakeLocations, tmp_path):
    """Views over s3:// would need fsspec in every analyst connection; the copy needs it only to build."""
    land_folder(write_batch(tmp_path / "batch", success=False), aws_locations, DAY_1)
    defs = build_definitions(aws_locations)
    with DagsterInstance.ephemeral() as instance:
        assert run_partition(defs, instance, DAY_1).success
        assert latest_metadata(instance)["published"] is True
    assert aws_locations.partitions("clean", "clean_orders")[DAY_1].startswith("s3://")
    assert rows(aws_locations, "SELECT count(*) FROM joined_order_products") == [
        (len(PRIOR_LINES) + len(TRAIN_LINES),)
    ]
    assert rows(aws_locations, "SELECT department FROM departments WHERE department_id = 4") == [("produce",)]
