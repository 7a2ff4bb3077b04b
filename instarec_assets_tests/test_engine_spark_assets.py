"""The clean assets with engine=spark: each step runs the Spark job through Dagster Pipes (a local
PySpark subprocess), and the lake and the metadata are what the DuckDB engine gives."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance

from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, TRAIN_LINES, write_batch
from instarec_assets_tests.test_assets_lake import DAY_1, run_partition

pytest.importorskip("pyspark", reason="the spark extra is not installed")

pytestmark = pytest.mark.slow


def test_clean_assets_on_spark_write_the_lake_and_show_the_engine(locations: LakeLocations):
    write_batch(Path(locations.landing_partition_uri(DAY_1)))
    defs = build_definitions(locations, engine="spark")
    with DagsterInstance.ephemeral() as instance:
        result = run_partition(defs, instance, DAY_1)
        assert result.success
        clean_lines = locations.partition_uri("clean", "clean_order_products", DAY_1)
        counts = dict(duckdb.sql(f"SELECT eval_set, count(*) FROM '{clean_lines}' GROUP BY ALL").fetchall())
        assert counts == {"prior": len(PRIOR_LINES), "train": len(TRAIN_LINES)}
        clean_orders = locations.partition_uri("clean", "clean_orders", DAY_1)
        assert duckdb.sql(f"SELECT order_id FROM '{clean_orders}' ORDER BY 1").fetchall() == [
            (order[0],) for order in sorted(ORDERS)
        ]
        for table in ("orders", "order_products", "products", "aisles", "departments"):
            for asset in (f"clean_{table}", f"quarantined_{table}"):
                event = instance.get_latest_materialization_event(AssetKey(asset))
                assert event.asset_materialization.metadata["engine"].value == "spark", asset
        orders = instance.get_latest_materialization_event(AssetKey("clean_orders")).asset_materialization
        assert orders.metadata["row_accounting"].value == (
            f"raw {len(ORDERS)} = clean {len(ORDERS)} + quarantined 0 + duplicates 0"
        )
