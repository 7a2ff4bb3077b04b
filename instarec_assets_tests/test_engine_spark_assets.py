"""The clean and curated assets with engine=spark: each step runs its Spark job through Dagster Pipes
(a local PySpark subprocess), and the lake and the metadata are what the DuckDB engine gives."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance

from instarec_assets.assets.curated import FEATURE_SET_DESCRIPTIONS
from instarec_assets.definitions import build_definitions
from instarec_assets.generate import generate_dataset
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import assets_through, register_batch
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, TRAIN_LINES, write_batch
from instarec_assets_tests.test_assets_incremental import curated_tables
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


def test_features_on_spark_rebuild_the_duckdb_update_and_show_the_engine(tmp_path: Path):
    """Two batches through curated on DuckDB (the second an incremental update), then the second
    batch's feature step again with engine=spark: a full build by the Pipes job, the same tables."""
    summary = generate_dataset(tmp_path / "generated", users=60, seed=5, batches=2)
    locations = LakeLocations(env="local", home=str(tmp_path / "home"))
    on_duckdb, on_spark = build_definitions(locations), build_definitions(locations, engine="spark")
    with DagsterInstance.ephemeral() as instance:
        for batch in summary.batches:
            target = Path(locations.landing_partition_uri(batch.partition))
            target.parent.mkdir(parents=True, exist_ok=True)
            batch.folder.rename(target)
            register_batch(instance, batch.partition)
            result = on_duckdb.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
                partition_key=batch.partition,
                instance=instance,
                asset_selection=assets_through(on_duckdb, "curated"),
            )
            assert result.success
        latest = summary.batches[-1].partition
        updated = instance.get_latest_materialization_event(AssetKey("training_set")).asset_materialization
        assert (updated.metadata["mode"].value, updated.metadata["engine"].value) == ("incremental", "duckdb")
        assert updated.metadata["storage"].value == "delta"
        expected = curated_tables(locations, latest)

        curated = [AssetKey(name) for name in (*FEATURE_SET_DESCRIPTIONS, "affected_users")]
        result = on_spark.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
            partition_key=latest, instance=instance, asset_selection=curated
        )
        assert result.success
        assert curated_tables(locations, latest) == expected
        for key in curated:
            metadata = instance.get_latest_materialization_event(key).asset_materialization.metadata
            assert (metadata["engine"].value, metadata["mode"].value) == ("spark", "full"), key
        training = instance.get_latest_materialization_event(AssetKey("training_set")).asset_materialization
        assert "incremental update runs on duckdb only" in training.metadata["mode_reason"].value
        assert training.metadata["label_rate"].value > 0
        affected = instance.get_latest_materialization_event(AssetKey("affected_users")).asset_materialization
        assert affected.metadata["users_by_reason"].value == {"full build": affected.metadata["users"].value}
