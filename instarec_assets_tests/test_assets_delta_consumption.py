"""Delta batches in the consumption zone: with kept models, batches 2 and 3 re-score and re-list only
the users whose features changed, and give those users the rows a full re-score gives; everyone else
keeps the lists served before, next_basket still covers every test order, a new model forces full.
The ranking report is carried while both models are kept and recomputed for a new one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
from dagster import AllPartitionMapping, AssetKey, DagsterInstance

from instarec_assets.assets.consumption import dynamodb_recommendations, next_basket
from instarec_assets.backends.serving_store import store_from_env
from instarec_assets.consumption.deltas import resolve_latest_rows
from instarec_assets.consumption.submission import next_baskets
from instarec_assets.definitions import build_definitions
from instarec_assets.generate import generate_dataset
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.none_probability import read_none_calibration
from instarec_assets.pipeline.runner import register_batch
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets_tests.landing_fixtures import write_small_products

GRAPH_CONFIG = {"epochs": 2, "device": "cpu"}
CONSUMPTION = ("reorder_predictions", "next_basket", "recommendations", "dynamodb_recommendations")
# Every retrain rule off: the models of batch 1 are kept, so batches 2 and 3 can be deltas.
KEEP_MODELS = {
    "INSTAREC_RETRAIN_EVERY_BATCHES": "0",
    "INSTAREC_RETRAIN_MAX_AGE_DAYS": "0",
    "INSTAREC_RETRAIN_DRIFT_PSI": "0",
}


@contextmanager
def local_lake_keeping_models(home: Path) -> Iterator[LakeLocations]:
    """The environment of a local lake at `home` with every retrain rule off (KEEP_MODELS), for a
    module's whole run of batches (the `home` fixture is per test); restored on exit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INSTAREC_HOME", str(home))
        patch.setenv("INSTAREC_ENV", "local")
        for name, value in KEEP_MODELS.items():
            patch.setenv(name, value)
        yield LakeLocations(env="local", home=str(home))


def test_predictions_are_a_declared_all_partitions_upstream_of_next_basket_and_the_serving_load():
    for asset, upstream in (
        (next_basket, "reorder_predictions"),
        (dynamodb_recommendations, "recommendations"),
    ):
        assert AssetKey(upstream) in asset.dependency_keys
        assert isinstance(asset.get_partition_mapping(AssetKey(upstream)), AllPartitionMapping)


def _metadata(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(asset)]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def _rows(uri: str, users: set[int] | None = None, columns: str = "*") -> list[tuple]:
    rows = duckdb.sql(f"SELECT {columns} FROM read_parquet('{uri}', hive_partitioning = false) ORDER BY ALL")
    frame = rows.fetchall()
    names = [name for name in rows.columns]
    if users is None:
        return frame
    position = names.index("user_id")
    return [row for row in frame if row[position] in users]


def _served(home: Path) -> dict[int, list[dict]]:
    store = store_from_env(home, read_only=True)
    try:
        lists = {}
        for user in range(1, 400):
            found = store.top_k(user)
            if found is not None:
                lists[user] = [item.to_dict() for item in found.items]
        return lists
    finally:
        store.close()


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Three batches (full, delta, delta), the files of batch 3's delta kept aside, then batch 3
    re-scored in full, then once more with a freshly fitted XGBoost model."""
    home = tmp_path_factory.mktemp("delta-home")
    # A tenth of the catalog: five runs of the pipeline, each costing in proportion to the catalog.
    products = write_small_products(home / "products.csv")
    summary = generate_dataset(home / "generated", users=200, seed=7, batches=3, products_file=products)
    with local_lake_keeping_models(home) as locations:
        defs = build_definitions(locations)
        job = defs.resolve_job_def(LANDING_JOB_NAME)
        instance = DagsterInstance.ephemeral()
        partitions = [batch.partition for batch in summary.batches]
        results, served, kept = {}, {}, {}

        def run(partition: str, name: str, ops: dict | None = None, selection=None) -> None:
            results[name] = job.execute_in_process(
                partition_key=partition,
                instance=instance,
                run_config={"ops": {"graphsage_step": {"config": GRAPH_CONFIG}, **(ops or {})}},
                asset_selection=selection,
                raise_on_error=False,
            )

        for batch in summary.batches:
            target = Path(locations.landing_partition_uri(batch.partition))
            target.parent.mkdir(parents=True, exist_ok=True)
            batch.folder.rename(target)
            register_batch(instance, batch.partition)
            run(batch.partition, batch.partition)
            served[batch.partition] = _served(home)
        third = partitions[-1]
        for zone, table in (
            ("consumption", "reorder_predictions"),
            ("consumption", "recommendations"),
            ("consumption", "next_basket"),
            ("curated", "affected_users"),
        ):
            kept[table] = _rows(locations.partition_uri(zone, table, third))
        kept["chain"] = {
            table: _rows(
                str(
                    resolve_latest_rows(
                        duckdb.connect(),
                        [locations.partition_uri("consumption", table, key) for key in partitions],
                        home / f"{table}-chain.parquet",
                    ).path
                )
            )
            for table in ("reorder_predictions", "recommendations")
        }
        # every test order selected again over batch 3's chain, what its carried baskets must equal
        kept["reselected"] = next_baskets(
            duckdb.connect(),
            [locations.partition_uri("consumption", "reorder_predictions", key) for key in partitions],
            [locations.partition_uri("clean", "clean_orders", key) for key in partitions],
            read_none_calibration(_metadata(results[third], "xgboost_model")["path"]),
        ).table
        consumption = [AssetKey(name) for name in CONSUMPTION]
        run(third, "full", {"reorder_predictions": {"config": {"full_rescore": True}}}, consumption)
        served["full"] = _served(home)
        kept["full"] = {
            table: _rows(locations.partition_uri("consumption", table, third))
            for table in ("reorder_predictions", "recommendations", "next_basket")
        }
        run(
            third,
            "retrained",
            {"xgboost_model": {"config": {"force_retrain": True}}},
            [AssetKey("xgboost_model"), AssetKey("ranking_report"), *consumption],
        )
        yield locations, partitions, results, served, kept
        instance.dispose()


@pytest.mark.slow
def test_batches_after_the_first_are_deltas_over_the_previous_one(lake):
    _, (first, second, third), results, _, kept = lake
    for name in (first, second, third, "full", "retrained"):
        failed = {e.step_key for e in results[name].all_events if e.is_step_failure}
        assert failed <= {"ranking_report"}, (name, failed)
    modes = [_metadata(results[batch], "reorder_predictions") for batch in (first, second, third)]
    assert [m["mode"] for m in modes] == ["full", "delta", "delta"]
    assert [m["delta_base"] for m in modes] == ["none", first, second]
    assert [m["delta_chain_length"] for m in modes] == [0, 1, 2]
    affected = {row[0] for row in kept["affected_users"]}
    assert 0 < modes[2]["users"] <= modes[2]["affected_users"] == len(affected) < 200
    assert {row[0] for row in kept["reorder_predictions"]} <= affected
    curated = _metadata(results[third], "affected_users")
    assert curated["mode"] == "incremental" and sum(curated["users_by_reason"].values()) == len(affected)
    assert _metadata(results[first], "affected_users")["users_by_reason"].keys() == {"full build"}
    recommendations = _metadata(results[third], "recommendations")
    assert recommendations["mode"] == "delta" and recommendations["delta_base"] == second
    assert {row[0] for row in kept["recommendations"]} <= affected
    loads = [_metadata(results[batch], "dynamodb_recommendations") for batch in (first, second, third)]
    assert [load["load"] for load in loads] == ["full", "delta", "delta"]
    assert loads[2]["users_in_partition"] == len({row[0] for row in kept["recommendations"]})
    assert _metadata(results["full"], "dynamodb_recommendations")["load"] == "full"


@pytest.mark.slow
def test_affected_users_get_the_rows_of_a_full_rescore(lake):
    _, _, results, _, kept = lake
    assert _metadata(results["full"], "reorder_predictions")["mode"] == "full"
    affected = {row[0] for row in kept["affected_users"]}
    for table in ("reorder_predictions", "recommendations"):
        full = [row for row in kept["full"][table] if row[0] in affected]
        assert kept[table] == full, table
    # the chain's current rows for affected users are this batch's delta rows
    assert [row for row in kept["chain"]["reorder_predictions"] if row[0] in affected] == kept[
        "reorder_predictions"
    ]


@pytest.mark.slow
def test_unaffected_users_keep_their_served_lists_and_a_full_rescore_moves_them_a_little(lake):
    _, (_, second, third), _, served, kept = lake
    affected = {row[0] for row in kept["affected_users"]}
    unaffected = set(served[second]) - affected
    assert unaffected
    assert {user: served[third][user] for user in unaffected} == {
        user: served[second][user] for user in unaffected
    }
    for user in affected & set(served["full"]):
        assert served[third][user] == served["full"][user], user
    # The approximation: unaffected users' kept scores against a full re-score with the same models.
    chain = {(row[0], row[1], row[3]): row[4] for row in kept["chain"]["reorder_predictions"]}
    full = {(row[0], row[1], row[3]): row[4] for row in kept["full"]["reorder_predictions"]}
    drift = [abs(chain[key] - full[key]) for key in full if key[0] in unaffected and key in chain]
    print(
        f"unaffected users' |probability change| against a full re-score: max {max(drift):.4f}, "
        f"mean {sum(drift) / len(drift):.4f} over {len(drift)} rows"
    )
    assert drift and max(drift) < 0.25, max(drift)


@pytest.mark.slow
def test_next_basket_covers_every_test_order_and_matches_the_full_rescore_for_affected_users(lake):
    locations, partitions, results, _, kept = lake
    orders = [locations.partition_uri("clean", "clean_orders", key) for key in partitions]
    test_orders = duckdb.sql(
        f"SELECT order_id FROM read_parquet({orders}, hive_partitioning = false) "
        "QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY order_number DESC) = 1 "
        "AND eval_set = 'test' ORDER BY 1"
    ).fetchall()
    assert [(row[0],) for row in kept["next_basket"]] == test_orders
    metadata = _metadata(results[partitions[-1]], "next_basket")
    assert metadata["predictions_chain"] == partitions and metadata["predictions_mode"] == "delta"
    # batches 2 and 3 carry the baskets before them and select again only for their users
    assert [_metadata(results[key], "next_basket")["selection"] for key in partitions] == [
        "every test order",
        "carried",
        "carried",
    ]
    assert 0 < metadata["carried_orders"] < metadata["orders"]
    assert kept["reselected"].to_pylist() == [
        dict(
            zip(
                ("order_id", "user_id", "products", "n_products", "include_none", "expected_f1"),
                row,
                strict=True,
            )
        )
        for row in kept["next_basket"]
    ]
    assert _metadata(results["full"], "next_basket")["selection"] == "every test order"
    assert _metadata(results["retrained"], "next_basket")["selection"] == "every test order"
    affected = {row[0] for row in kept["affected_users"]}
    assert [row for row in kept["next_basket"] if row[1] in affected] == [
        row for row in kept["full"]["next_basket"] if row[1] in affected
    ]


@pytest.mark.slow
def test_a_retrained_model_forces_a_full_batch(lake):
    _, _, results, _, _ = lake
    metadata = _metadata(results["retrained"], "reorder_predictions")
    assert metadata["mode"] == "full" and metadata["mode_reason"].startswith("new XGBoost model")
    assert _metadata(results["retrained"], "recommendations")["mode"] == "full"
    assert _metadata(results["retrained"], "dynamodb_recommendations")["load"] == "full"


@pytest.mark.slow
def test_the_ranking_report_is_carried_while_both_models_are_kept(lake):
    _, (first, second, third), results, _, _ = lake
    reports = [_metadata(results[name], "ranking_report") for name in (first, second, third, "retrained")]
    assert [report["mode"] for report in reports] == ["incremental", "carried", "carried", "incremental"]
    assert [report["computed_in"] for report in reports] == [first, first, first, third]
    assert reports[1]["rows_by_method"] == reports[2]["rows_by_method"] == reports[0]["rows_by_method"]
    assert reports[1]["served_vs_top_frequency"] == reports[0]["served_vs_top_frequency"]
    assert "carried: XGBoost" in reports[2]["mode_reason"]
    assert reports[3]["model_version"] != reports[0]["model_version"]
    assert reports[3]["mode_reason"].startswith("recomputed: a model was fitted on this batch")
    checks = [
        evaluation.passed
        for name in (first, second)
        for evaluation in results[name].get_asset_check_evaluations()
        if evaluation.check_name == "served_beats_top_frequency"
    ]
    assert len(checks) == 2 and checks[0] == checks[1]
