"""landing_sensor: one run request per complete landing folder, once, through Dagster's sensor tools."""

from __future__ import annotations

import time
from pathlib import Path

from dagster import build_sensor_context

from instarec_assets.completeness import BatchTargets, batch_states, latest_landing
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import assets_through, register_batch
from instarec_assets.sensors import (
    LANDING_JOB_NAME,
    MAX_REPAIRS,
    REPAIR_BACKOFF_SECONDS,
    LandingCursor,
    landing_sensor,
)
from instarec_assets_tests.landing_fixtures import write_batch


def evaluate(defs, instance, cursor: str | None = None):
    # A context manager: the lake resource has setup and teardown (scratch reclaiming).
    with build_sensor_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        cursor=cursor,
        resources={"lake": defs.resources["lake"]},
    ) as context:
        return landing_sensor(context)


def test_each_complete_folder_is_requested_once(defs, instance, locations: LakeLocations):
    landing = Path(locations.landing_uri())
    write_batch(landing / "2025-01-06")
    write_batch(landing / "2025-01-13")

    first = evaluate(defs, instance)
    assert [request.partition_key for request in first.run_requests] == ["2025-01-06", "2025-01-13"]
    assert {request.run_key for request in first.run_requests} == {"landing-2025-01-06", "landing-2025-01-13"}

    again = evaluate(defs, instance, cursor=first.cursor)
    assert not getattr(again, "run_requests", None)

    write_batch(landing / "2025-01-20")
    later = evaluate(defs, instance, cursor=first.cursor)
    assert [request.partition_key for request in later.run_requests] == ["2025-01-20"]


def test_folder_without_success_marker_waits_until_it_is_complete(defs, instance, locations: LakeLocations):
    folder = write_batch(Path(locations.landing_uri()) / "2025-01-06", success=False)
    waiting = evaluate(defs, instance)
    assert not getattr(waiting, "run_requests", None)

    (folder / "_SUCCESS").touch()
    ready = evaluate(defs, instance, cursor=getattr(waiting, "cursor", None))
    assert [request.partition_key for request in ready.run_requests] == ["2025-01-06"]


def test_malformed_folder_names_are_logged_and_skipped(defs, instance, locations: LakeLocations, capfd):
    landing = Path(locations.landing_uri())
    write_batch(landing / "last-tuesday")
    write_batch(landing / "2025-13-45")
    write_batch(landing / "2025-01-06")

    result = evaluate(defs, instance)
    assert [request.partition_key for request in result.run_requests] == ["2025-01-06"]
    logged = capfd.readouterr().err
    assert "last-tuesday" in logged and "2025-13-45" in logged


def test_sensor_targets_the_job_that_covers_every_asset(defs):
    job = defs.resolve_job_def(landing_sensor.job_name)
    planned = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"raw_orders", "clean_orders", "clean_order_products", "clean_products"} <= planned


def test_a_batch_left_incomplete_is_repaired_with_backoff_then_left_failed(
    defs, instance, locations: LakeLocations
):
    """A batch materialised only through clean (as a run that died after clean leaves it) is re-run
    a bounded number of times, with growing waits; a new batch is run as before."""
    landing = Path(locations.landing_uri())
    write_batch(landing / "2025-01-06")
    register_batch(instance, "2025-01-06")
    assert (
        defs.resolve_job_def(landing_sensor.job_name)
        .execute_in_process(
            partition_key="2025-01-06", instance=instance, asset_selection=assets_through(defs, "clean")
        )
        .success
    )
    write_batch(landing / "2025-01-13")

    result = evaluate(defs, instance)
    landing_id = latest_landing(instance, "2025-01-06")
    assert {request.run_key: request.partition_key for request in result.run_requests} == {
        f"landing-2025-01-06-{landing_id}-repair-1": "2025-01-06",
        "landing-2025-01-13": "2025-01-13",
    }
    assert LandingCursor.parse(result.cursor).repairs["2025-01-06"][0] == 1

    waiting = evaluate(defs, instance, cursor=result.cursor)
    assert not getattr(waiting, "run_requests", None)  # within the backoff

    cursor = LandingCursor.parse(result.cursor)
    for repair in range(2, MAX_REPAIRS + 1):
        count, _ = cursor.repairs["2025-01-06"]
        assert count == repair - 1
        # The wait doubles each time: just short of it, nothing; past it, the next repair.
        cursor.repairs["2025-01-06"] = [count, time.time() - REPAIR_BACKOFF_SECONDS * 2**count + 30]
        assert not getattr(evaluate(defs, instance, cursor=cursor.dump()), "run_requests", None)
        cursor.repairs["2025-01-06"] = [count, time.time() - REPAIR_BACKOFF_SECONDS * 2**count - 1]
        again = evaluate(defs, instance, cursor=cursor.dump())
        assert [request.run_key for request in again.run_requests] == [
            f"landing-2025-01-06-{landing_id}-repair-{repair}"
        ]
        cursor = LandingCursor.parse(again.cursor)

    cursor.repairs["2025-01-06"][1] = 0.0  # long ago: still no more repairs after the last one
    assert not getattr(evaluate(defs, instance, cursor=cursor.dump()), "run_requests", None)
    [state] = batch_states(
        instance, LANDING_JOB_NAME, ["2025-01-06"], BatchTargets.of(defs.resolve_asset_graph())
    )
    assert state.state == "incomplete"
    assert "analyst_warehouse" in state.missing and "clean_orders" not in state.missing


def test_a_cursor_from_before_repairs_is_read_as_the_folders_seen(defs, instance, locations: LakeLocations):
    landing = Path(locations.landing_uri())
    write_batch(landing / "2025-01-06")
    result = evaluate(defs, instance, cursor='["2025-01-06"]')
    assert not getattr(result, "run_requests", None)
