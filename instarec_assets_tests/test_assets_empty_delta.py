"""A kept-models batch that affects no user (here: a catalog-only batch, its order files empty) is an
empty delta: predictions and lists hold no rows, next_basket still covers every test order, and the
serving load is skipped with the active version kept; the next batch's delta goes on top of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from instarec_assets.backends.serving_store import store_from_env
from instarec_assets.consumption.deltas import DELTA, FULL, SKIP, plan_serving_load
from instarec_assets.definitions import build_definitions
from instarec_assets.generate import generate_dataset
from instarec_assets.pipeline.runner import register_batch
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets_tests.test_assets_delta_consumption import local_lake_keeping_models

GRAPH_CONFIG = {"epochs": 2, "device": "cpu"}
ORDER_FILES = ("orders.csv", "order_products__prior.csv", "order_products__train.csv")


def test_an_empty_delta_over_its_base_loads_nothing():
    chain = [("2025-01-06", 500), ("2025-01-13", 0)]
    plan = plan_serving_load(DELTA, "2025-01-06", "2025-01-06", chain)
    assert plan.load == SKIP and "active version (batch 2025-01-06) stays" in plan.line


def test_a_delta_after_skipped_loads_goes_on_the_version_they_kept():
    chain = [("2025-01-06", 500), ("2025-01-13", 0), ("2025-01-20", 0), ("2025-01-27", 40)]
    plan = plan_serving_load(DELTA, "2025-01-20", "2025-01-06", chain)
    assert plan.load == DELTA and plan.line.endswith("the 40 rows of this partition's users over 2025-01-06")
    # a skipped batch in between that did hold rows (its load failed) forces a full load
    chain[1] = ("2025-01-13", 7)
    assert plan_serving_load(DELTA, "2025-01-20", "2025-01-06", chain).load == FULL
    # no active version, or one from outside the chain: full, however empty the partition
    assert plan_serving_load(DELTA, "2025-01-20", None, [*chain[:-1], ("2025-01-27", 0)]).load == FULL
    assert plan_serving_load(DELTA, "2025-01-20", "2024-12-30", chain).load == FULL
    assert plan_serving_load(FULL, None, "2025-01-06", chain).load == FULL


def _metadata(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(asset)]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def _active(home: Path) -> dict:
    store = store_from_env(home, read_only=True)
    try:
        return store.current_info()
    finally:
        store.close()


def _empty_order_files(folder: Path) -> None:
    """Keep each order file's header only: the batch brings the catalog and no order or line."""
    for name in ORDER_FILES:
        path = folder / name
        header = path.read_text().splitlines()[0]
        path.write_text(header + "\n")


@pytest.mark.slow
def test_a_batch_without_affected_users_keeps_the_served_version(tmp_path):
    home = tmp_path / "home"
    summary = generate_dataset(tmp_path / "generated", users=200, seed=7, batches=3)
    _empty_order_files(summary.batches[1].folder)
    with local_lake_keeping_models(home) as locations:
        job = build_definitions(locations).resolve_job_def(LANDING_JOB_NAME)
        instance = DagsterInstance.ephemeral()
        results, active = {}, {}
        for batch in summary.batches:
            target = Path(locations.landing_partition_uri(batch.partition))
            target.parent.mkdir(parents=True, exist_ok=True)
            batch.folder.rename(target)
            register_batch(instance, batch.partition)
            results[batch.partition] = job.execute_in_process(
                partition_key=batch.partition,
                instance=instance,
                run_config={"ops": {"graphsage_step": {"config": GRAPH_CONFIG}}},
                raise_on_error=False,
            )
            active[batch.partition] = _active(home)
        instance.dispose()
    first, empty, third = (batch.partition for batch in summary.batches)
    for partition, result in results.items():
        assert result.success, partition
    predictions = _metadata(results[empty], "reorder_predictions")
    assert predictions["mode"] == DELTA and predictions["affected_users"] == 0 and predictions["users"] == 0
    lists = _metadata(results[empty], "recommendations")
    assert lists["mode"] == DELTA and lists["users"] == 0
    # every test order still has a basket: the predictions chain is resolved, not just this partition
    baskets = _metadata(results[empty], "next_basket")
    assert baskets["orders"] == _metadata(results[first], "next_basket")["orders"] > 0
    load = _metadata(results[empty], "dynamodb_recommendations")
    assert load["load"] == SKIP and load["users_in_partition"] == 0
    assert load["loaded"].startswith("nothing loaded: no affected users in this batch")
    assert active[empty]["version"] == active[first]["version"] and active[empty]["batch"] == first
    # the next batch's delta goes on top of the version the empty batch kept, not a full reload
    after = _metadata(results[third], "dynamodb_recommendations")
    assert after["load"] == DELTA and after["loaded"].endswith(f"users over {first}")
    assert active[third]["batch"] == third and active[third]["version"] != active[first]["version"]
