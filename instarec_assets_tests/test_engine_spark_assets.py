"""The clean and curated assets with engine=spark: each step runs its Spark job through Dagster Pipes
(a local PySpark subprocess), and the lake and the metadata are what the DuckDB engine gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, build_asset_context

from instarec_assets.assets.curated import FEATURE_SET_DESCRIPTIONS
from instarec_assets.assets.spark_jobs import JVM_LOG_FILE, forward_jvm_log, require_local_spark
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


def test_clean_assets_on_spark_write_the_lake_and_show_the_engine(locations: LakeLocations, capfd):
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
        # each job's own summary line, sent through Pipes, is in the run's log
        messages = [record.user_message for record in instance.all_logs(result.run_id)]
        assert any(
            message.startswith(f"staged {len(ORDERS)} clean and 0 quarantined rows of orders: raw ")
            for message in messages
        ), messages
    # The five jobs' JVMs wrote their console to their log files, not to this terminal.
    out, err = capfd.readouterr()
    assert "log4j" not in out + err and "jdk.incubator" not in out + err


def test_a_local_jvm_writes_its_console_to_the_log_file_and_python_keeps_its_own(tmp_path: Path):
    log = tmp_path / "jvm.log"
    script = (
        "import sys; from pathlib import Path\n"
        "from instarec_assets.lake.spark_connection import spark_session\n"
        "spark = spark_session('local[1]', app_name='console', jvm_log=Path(sys.argv[1]))\n"
        "print('python stdout', flush=True); print('python stderr', file=sys.stderr, flush=True)\n"
        "spark.stop()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(log)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "python stdout" in done.stdout and "python stderr" in done.stderr
    assert "log4j" not in done.stdout + done.stderr
    assert "log4j" in log.read_text()


def test_a_failed_local_job_leaves_its_jvm_output_in_the_run_log(tmp_path: Path, capfd):
    log = tmp_path / JVM_LOG_FILE
    log.write_text("Using Spark's default log4j profile\nERROR Executor: task 0 failed\n")
    with build_asset_context() as context:
        forward_jvm_log(context, log, failed=True)
    err = capfd.readouterr().err
    assert "WARNING" in err and "ERROR Executor: task 0 failed" in err
    assert not log.exists()
    log.write_text("Using Spark's default log4j profile\n")
    with build_asset_context() as context:
        forward_jvm_log(context, log, failed=False)
    assert "log4j" not in capfd.readouterr().err and not log.exists()


def test_the_spark_engine_without_java_is_one_line_naming_the_package(tmp_path: Path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("JAVA_HOME", str(empty))
    with pytest.raises(RuntimeError, match=f"JAVA_HOME={empty} has no bin/java.*openjdk-17-jre-headless"):
        require_local_spark()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(RuntimeError, match="no java on PATH and no JAVA_HOME"):
        require_local_spark()


def test_features_on_spark_update_a_whole_batch_and_rebuild_after_a_delta(tmp_path: Path):
    """Three batches through curated on DuckDB (the second and third stored as deltas). Then with
    engine=spark: batch 3 again, whose previous batch is a delta, is a full build by the Pipes job;
    batch 2 again, whose previous batch is whole, is an incremental update by the job. Both give
    the tables DuckDB gave, and say which they were."""
    summary = generate_dataset(tmp_path / "generated", users=60, seed=5, batches=3)
    locations = LakeLocations(env="local", home=str(tmp_path / "home"))
    on_duckdb, on_spark = build_definitions(locations), build_definitions(locations, engine="spark")
    curated = [AssetKey(name) for name in (*FEATURE_SET_DESCRIPTIONS, "affected_users")]

    def latest(key: AssetKey):
        return instance.get_latest_materialization_event(key).asset_materialization

    with DagsterInstance.ephemeral() as instance:
        expected = {}
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
            expected[batch.partition] = curated_tables(locations, batch.partition)
        updated = latest(AssetKey("training_set"))
        assert (updated.metadata["mode"].value, updated.metadata["engine"].value) == ("incremental", "duckdb")
        assert updated.metadata["storage"].value == "delta"
        second, third = (batch.partition for batch in summary.batches[1:])

        for partition, mode in ((third, "full"), (second, "incremental")):
            result = on_spark.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
                partition_key=partition, instance=instance, asset_selection=curated
            )
            assert result.success
            assert curated_tables(locations, partition) == expected[partition], partition
            for key in curated:
                metadata = latest(key).metadata
                assert (metadata["engine"].value, metadata["mode"].value) == ("spark", mode), (partition, key)
            training = latest(AssetKey("training_set"))
            assert training.metadata["storage"].value == "base"
            assert "spark engine writes whole tables" in training.metadata["storage_reason"].value
            assert training.metadata["label_rate"].value > 0
            by_reason = latest(AssetKey("affected_users")).metadata["users_by_reason"].value
            if mode == "full":
                assert (
                    "feature deltas (written by the duckdb engine)" in training.metadata["mode_reason"].value
                )
                assert set(by_reason) == {"full build"}
            else:
                assert training.metadata["affected_users"].value == sum(by_reason.values()) > 0
                assert "full build" not in by_reason
