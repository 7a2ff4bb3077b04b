"""The partition model: landing batches as dynamic partitions, declared history reads, staleness,
ordering of history reads and concurrent runs of adjacent batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from instarec_assets.cli import main
from instarec_assets.definitions import build_definitions
from instarec_assets.history import HistoryWait
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.partitions import HISTORY_INPUT, HISTORY_POOL, LANDING_BATCHES, THROUGH_PARTITION
from instarec_assets.pipeline.runner import assets_through, register_batch
from instarec_assets.sensors import LANDING_JOB_NAME, landing_sensor
from instarec_assets_tests.landing_fixtures import ORDERS, write_batch

DAY_1 = "2025-01-06"
DAY_2 = "2025-01-13"
WAREHOUSE = AssetKey("analyst_warehouse")


def run(defs, instance, partition_key: str, extra=()):
    register_batch(instance, partition_key)
    return defs.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
        partition_key=partition_key,
        instance=instance,
        raise_on_error=False,
        asset_selection=[*assets_through(defs, "clean"), *extra],
    )


def second_batch(folder: Path) -> None:
    """A batch that resends an order of the first (a duplicate only if the first is history)."""
    new_orders = [(204, 2, "prior", 4, 2, 10, "6.0"), (205, 2, "test", 5, 2, 11, "7.0")]
    write_batch(folder, orders=[ORDERS[0], *new_orders], prior_lines=[(204, 2, 1, 1)], train_lines=[])


def test_a_2017_landing_is_a_partition_and_only_real_batches_are_listed(capsys, home: Path, tmp_path: Path):
    """The README's real-Kaggle example: any date is a batch; the partition list holds only batches."""
    batch = write_batch(tmp_path / "kaggle")
    assert (
        main(["materialize", "--landing", str(batch), "--partition", "2017-05-01", "--through", "clean"]) == 0
    )
    assert "partition 2017-05-01" in capsys.readouterr().out
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions(LANDING_BATCHES) == ["2017-05-01"]
        assert instance.get_materialized_partitions(AssetKey("clean_orders")) == {"2017-05-01"}
    assert Path(LakeLocations(home=str(home)).partition_uri("clean", "clean_orders", "2017-05-01")).exists()


def test_sensor_adds_each_new_batch_as_a_partition(defs, instance, locations: LakeLocations):
    landing = Path(locations.landing_uri())
    write_batch(landing / "2016-12-30")
    write_batch(landing / DAY_1)
    with build_sensor_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        resources={"lake": defs.resources["lake"]},
    ) as context:
        result = landing_sensor(context)
    assert [request.partition_key for request in result.run_requests] == ["2016-12-30", DAY_1]
    (added,) = result.dynamic_partitions_requests
    assert added.partitions_def_name == LANDING_BATCHES and list(added.partition_keys) == [
        "2016-12-30",
        DAY_1,
    ]


def test_history_reads_are_declared_with_the_all_partitions_mapping(defs):
    graph = defs.resolve_asset_graph()
    warehouse = graph.get(WAREHOUSE)
    assert {key.to_user_string() for key in warehouse.parent_keys} == {
        "clean_orders",
        "clean_order_products",
        "clean_products",
        "clean_aisles",
        "clean_departments",
        "quarantined_orders",
        "quarantined_order_products",
        "quarantined_products",
        "quarantined_aisles",
        "quarantined_departments",
    }
    mapping = graph.get_partition_mapping(WAREHOUSE, AssetKey("clean_orders"))
    assert type(mapping).__name__ == "AllPartitionMapping"
    assert type(graph.get_partition_mapping(WAREHOUSE, AssetKey("clean_products"))).__name__ == (
        "IdentityPartitionMapping"
    )
    # The warehouse's quarantine table holds every batch's quarantined rows up to its own.
    assert type(graph.get_partition_mapping(WAREHOUSE, AssetKey("quarantined_products"))).__name__ == (
        "AllPartitionMapping"
    )
    # A clean table deduplicated against its own past depends on the raw history it derives from.
    assert type(graph.get_partition_mapping(AssetKey("clean_orders"), AssetKey("raw_orders"))).__name__ == (
        "AllPartitionMapping"
    )
    recommendations = graph.get(AssetKey("recommendations"))
    assert {"clean_products", "clean_aisles", "clean_departments"} <= {
        key.to_user_string() for key in recommendations.parent_keys
    }
    assert AssetKey("recommendations") in graph.get(AssetKey("dynamodb_recommendations")).parent_keys
    curated = defs.resolve_assets_def(AssetKey("training_set"))
    assert curated.node_def.input_def_named("clean_orders").metadata[HISTORY_INPUT] == THROUGH_PARTITION


def land_and_run_both_batches(defs, instance, locations: LakeLocations) -> Path:
    """Both batches landed and run through clean and the warehouse, in date order; the landing root."""
    landing = Path(locations.landing_uri())
    write_batch(landing / DAY_1)
    second_batch(landing / DAY_2)
    assert run(defs, instance, DAY_1, [WAREHOUSE]).success
    assert run(defs, instance, DAY_2, [WAREHOUSE]).success
    return landing


def test_a_materialisation_records_the_batches_it_read(defs, instance, locations: LakeLocations):
    land_and_run_both_batches(defs, instance, locations)
    event = instance.get_latest_materialization_event(WAREHOUSE)
    assert event.asset_materialization.partition == DAY_2
    read = event.asset_materialization.metadata["history_read"].value
    assert read == {"clean_orders": [DAY_1, DAY_2], "clean_order_products": [DAY_1, DAY_2]}
    orders = instance.get_latest_materialization_event(AssetKey("clean_orders")).asset_materialization
    assert orders.metadata["own_history_partitions"].value == [DAY_1]


def test_relanding_a_batch_marks_what_read_it_stale(defs, instance, locations: LakeLocations):
    landing = land_and_run_both_batches(defs, instance, locations)

    def status(key: str, partition: str) -> StaleStatus:
        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
        )
        return resolver.get_status(AssetKey(key), partition)

    assert status("analyst_warehouse", DAY_2) == StaleStatus.FRESH
    assert status("clean_orders", DAY_2) == StaleStatus.FRESH
    write_batch(landing / DAY_1)  # re-landed with the same files: the raw data versions repeat
    assert run(defs, instance, DAY_1).success
    assert status("clean_orders", DAY_2) == StaleStatus.FRESH
    corrected = [*ORDERS[:-1], (*ORDERS[-1][:5], 17, ORDERS[-1][6])]  # a corrected order hour
    write_batch(landing / DAY_1, orders=corrected)  # re-landed with a change
    assert run(defs, instance, DAY_1).success
    assert status("clean_orders", DAY_2) == StaleStatus.STALE
    assert status("analyst_warehouse", DAY_2) == StaleStatus.STALE


def test_a_batch_whose_earlier_batch_never_ran_fails_in_one_line(instance, locations: LakeLocations):
    """After a short grace period (its run may be about to start) the step fails naming the batch."""
    defs = build_definitions(locations, HistoryWait(seconds=0.05, retries=5, grace_retries=2))
    landing = Path(locations.landing_uri())
    write_batch(landing / DAY_1)
    second_batch(landing / DAY_2)
    register_batch(instance, DAY_1)
    result = run(defs, instance, DAY_2)
    assert not result.success
    retries = [event for event in result.all_events if event.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) >= 2
    failures = [event for event in result.all_events if event.is_step_failure]
    assert failures and all(
        f"earlier batch {DAY_1} is not materialised" in str(event.event_specific_data.error.cause or "")
        or f"earlier batch {DAY_1} is not materialised" in event.event_specific_data.error.message
        for event in failures
    )


def _clean_lake(home: Path) -> dict[str, list]:
    """Every clean partition's rows, with the home folder's path (in source_file) taken out."""
    locations = LakeLocations(home=str(home))
    tables = ("clean_orders", "clean_order_products", "quarantined_orders", "clean_products")

    def relative(row: tuple) -> tuple:
        return tuple(value.replace(str(home), "<home>") if isinstance(value, str) else value for value in row)

    return {
        f"{table}/{key}": [
            relative(row)
            for row in duckdb.sql(
                f"SELECT * EXCLUDE (_ingested_at) FROM '{uri}' ORDER BY ALL"
                if "quarantined" not in table
                else f"SELECT source_row, reason FROM '{uri}' ORDER BY ALL"
            ).fetchall()
        ]
        for table in tables
        for key, uri in locations.partitions(locations.zone_of(table), table).items()
    }


@pytest.mark.slow
def test_concurrent_runs_of_adjacent_batches_give_the_lake_of_the_same_runs_in_order(tmp_path: Path):
    """Two processes materialise batch 2 and batch 1 at once on one home; the pool and the history
    wait make the result equal to running them in date order."""
    batches = tmp_path / "batches"
    write_batch(batches / DAY_1)
    second_batch(batches / DAY_2)

    def command(home: Path, day: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "instarec_assets.cli",
            "materialize",
            "--landing",
            str(batches / day),
            "--home",
            str(home),
            "--through",
            "clean",
        ]

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    in_order = tmp_path / "in-order"
    for day in (DAY_1, DAY_2):
        subprocess.run(command(in_order, day), env=env, check=True, capture_output=True, timeout=300)

    concurrent = tmp_path / "concurrent"
    os.environ["DAGSTER_HOME"] = str(concurrent / "dagster")
    (concurrent / "dagster").mkdir(parents=True)
    from instarec_assets.pipeline.runner import dagster_instance

    with dagster_instance(LakeLocations(home=str(concurrent))) as instance:
        register_batch(instance, DAY_1)  # both batches known, as when the sensor finds them together
        register_batch(instance, DAY_2)
    later = subprocess.Popen(
        command(concurrent, DAY_2), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    earlier = subprocess.Popen(
        command(concurrent, DAY_1), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    for process in (later, earlier):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()
    assert _clean_lake(concurrent) == _clean_lake(in_order)
    assert len(_clean_lake(in_order)) == 8


def test_history_steps_share_one_pool_that_the_local_instance_limits_to_one(defs, home: Path):
    from instarec_assets.pipeline.runner import dagster_instance

    graph = defs.resolve_asset_graph()
    pools = {
        key.to_user_string(): graph.get(key).pools
        for key in graph.get_all_asset_keys()
        if graph.get(key).pools
    }
    for asset in ("clean_orders", "training_set", "graphsage_model", "xgboost_model", "recommendations"):
        assert pools[asset] == {HISTORY_POOL}, asset
    assert "raw_orders" not in pools
    with dagster_instance(LakeLocations(home=str(home))) as instance:
        pool_config = instance.get_concurrency_config().pool_config
        assert pool_config.default_pool_limit == 1 and pool_config.pool_granularity.value == "op"
