"""The retrain policy in the model steps: three generated batches, retrain every 2 batches.

Batch 1 fits both models; batch 2 keeps them (XGBoost re-scored on batch 2's rows, GraphSAGE embeds
batch 2's new users inductively); batch 3 refits. Then batch 3 again, under a drift-only policy
with a threshold near 0 (drift refits) and under a policy with every rule off plus force_retrain.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, define_asset_job

from instarec_assets.assets.checks import clean_checks
from instarec_assets.assets.clean import CLEAN_STEPS
from instarec_assets.assets.curated import curated_features_step
from instarec_assets.assets.graph import graphsage_step
from instarec_assets.assets.models import xgboost_model
from instarec_assets.assets.raw import raw_landing_files
from instarec_assets.definitions import build_resources
from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.generate import generate_dataset
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.graphsage import CONFIG_FILE, STATE_DICT_FILE
from instarec_assets.ml.graphsage.graph_state import GraphState, build_state
from instarec_assets.ml.reorder_model import MODEL_CARD_FILE, MODEL_FILE
from instarec_assets.partitions import landing_batches
from instarec_assets.pipeline.runner import register_batch
from instarec_assets.resources import RetrainPolicyResource

pytestmark = pytest.mark.slow

JOB = "models_job"
GRAPH_CONFIG = {"epochs": 2, "edges_per_epoch": 0, "device": "cpu"}
RUN_CONFIG = {"ops": {"graphsage_step": {"config": GRAPH_CONFIG}}}
MODELS = ("xgboost_model", "graphsage_model")


def _definitions(locations: LakeLocations, policy: RetrainPolicyResource) -> Definitions:
    return Definitions(
        assets=[raw_landing_files, *CLEAN_STEPS, curated_features_step, graphsage_step, xgboost_model],
        asset_checks=clean_checks(),
        jobs=[define_asset_job(JOB, selection=AssetSelection.all(), partitions_def=landing_batches)],
        resources={**build_resources(locations), "retrain_policy": policy},
    )


def _metadata(result, asset: str) -> dict:
    (event,) = [
        event for event in result.get_asset_materialization_events() if event.asset_key == AssetKey(asset)
    ]
    return {name: value.value for name, value in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Three batches in date order, then two reruns of batch 3's model steps; yields
    (locations, {run name: result}, partitions). Files of batch 3 are those of the last rerun."""
    home = tmp_path_factory.mktemp("retrain-home")
    summary = generate_dataset(home / "generated", users=200, seed=7, batches=3)
    locations = LakeLocations(env="local", home=str(home))
    defs = _definitions(locations, RetrainPolicyResource(every_batches=2, max_age_days=0, drift_threshold=0))
    instance = DagsterInstance.ephemeral()
    results = {}
    partitions = [batch.partition for batch in summary.batches]
    for batch in summary.batches:
        target = Path(locations.landing_partition_uri(batch.partition))
        target.parent.mkdir(parents=True, exist_ok=True)
        batch.folder.rename(target)
        register_batch(instance, batch.partition)
        results[batch.partition] = defs.resolve_job_def(JOB).execute_in_process(
            partition_key=batch.partition, instance=instance, run_config=RUN_CONFIG, raise_on_error=False
        )
    models_only = [AssetKey(name) for name in ("graphsage_model", "user_embeddings", "product_embeddings")]
    drift_only = _definitions(
        locations, RetrainPolicyResource(every_batches=0, max_age_days=0, drift_threshold=1e-9)
    )
    results["drift"] = drift_only.resolve_job_def(JOB).execute_in_process(
        partition_key=partitions[-1],
        instance=instance,
        run_config=RUN_CONFIG,
        asset_selection=[*models_only, AssetKey("xgboost_model")],
        raise_on_error=False,
    )
    never = _definitions(locations, RetrainPolicyResource(every_batches=0, max_age_days=0, drift_threshold=0))
    results["forced"] = never.resolve_job_def(JOB).execute_in_process(
        partition_key=partitions[-1],
        instance=instance,
        run_config={
            "ops": {
                "graphsage_step": {"config": {**GRAPH_CONFIG, "force_retrain": True}},
                "xgboost_model": {"config": {"force_retrain": True}},
            }
        },
        asset_selection=[*models_only, AssetKey("xgboost_model")],
        raise_on_error=False,
    )
    yield locations, results, partitions
    instance.dispose()


def _folder(locations: LakeLocations, asset: str, partition: str) -> Path:
    return Path(locations.model_uri(asset, partition))


def test_every_run_succeeds(lake):
    _, results, _ = lake
    for name, result in results.items():
        assert result.success, name


def test_the_first_batch_trains_both_models(lake):
    locations, results, (first, _, _) = lake
    for asset in MODELS:
        metadata = _metadata(results[first], asset)
        assert metadata["retrained"] is True and metadata["retrain_reason"].startswith("first model")
        assert metadata["trained_on_batch"] == first
    card = json.loads((_folder(locations, "xgboost_model", first) / MODEL_CARD_FILE).read_text())
    assert card["trained_on_batch"] == first and card["retrain"]["retrain"] is True
    # the profile covers every feature the fit was offered (the similarity too, when it was left out)
    assert (
        set(card["features"])
        <= set(card["feature_profile"]["features"])
        <= {*card["features"], "gs_similarity"}
    )


def test_the_second_batch_keeps_and_rescores_the_xgboost_model(lake):
    locations, results, (first, second, _) = lake
    one, two = (_folder(locations, "xgboost_model", partition) for partition in (first, second))
    assert (one / MODEL_FILE).read_bytes() == (two / MODEL_FILE).read_bytes()
    card_one = json.loads((one / MODEL_CARD_FILE).read_text())
    card = json.loads((two / MODEL_CARD_FILE).read_text())
    assert card["model_version"] == card_one["model_version"]
    assert card["trained_on_batch"] == first and card["data_partition"] == second
    assert card["retrain"]["retrain"] is False and card["retrain"]["batches_since"] == 1
    # the validation metrics are the kept model's on batch 2's rows, not a copy of batch 1's
    assert card["metrics"] != card_one["metrics"]
    assert card["data_split"]["n_train_rows"] != card_one["data_split"]["n_train_rows"]
    assert card["ablation"]["from_training_batch"] == first
    assert card["feature_profile"] == card_one["feature_profile"]
    metadata = _metadata(results[second], "xgboost_model")
    assert metadata["retrained"] is False and metadata["batches_since_training"] == 1
    assert metadata["retrain_reason"].startswith(f"kept the model fitted on {first}: 1/2 batches")
    assert metadata["model_version"] == card_one["model_version"] and metadata["trained_on_batch"] == first
    assert metadata["drift_psi_max"] >= 0 and "| feature" in metadata["top_drifting_features"]
    checks = [e for e in results[second].get_asset_check_evaluations() if e.check_name == "beats_baselines"]
    assert (
        len(checks) == 1 and checks[0].metadata["model_f1"].value == card["metrics"]["basket_f1"]["model_f1"]
    )


def test_the_second_batch_keeps_graphsage_and_embeds_its_new_users(lake):
    locations, results, (first, second, _) = lake
    one, two = (_folder(locations, "graphsage_model", partition) for partition in (first, second))
    assert (one / STATE_DICT_FILE).read_bytes() == (two / STATE_DICT_FILE).read_bytes()
    config_one = json.loads((one / CONFIG_FILE).read_text())
    config = json.loads((two / CONFIG_FILE).read_text())
    assert config["model_version"] == config_one["model_version"]
    assert config["trained_on_batch"] == first and config["reused_in_batch"] == second
    assert config["retrain"]["retrain"] is False
    metadata = _metadata(results[second], "graphsage_model")
    assert metadata["retrained"] is False and 0 < metadata["drift_new_edge_share"] < 1
    users_one, users_two = (
        locations.partition_uri("curated", "user_embeddings", partition) for partition in (first, second)
    )
    new_users = duckdb.sql(
        f"SELECT count(*), bool_and(training_edges = 0), bool_and(list_sum(embedding) IS NOT NULL) "
        f"FROM read_parquet('{users_two}') WHERE framing = 'serving' "
        f"AND user_id NOT IN (SELECT user_id FROM read_parquet('{users_one}'))"
    ).fetchall()[0]
    assert new_users[0] > 0 and new_users[1] and new_users[2]
    embeddings = _metadata(results[second], "user_embeddings")
    assert embeddings["retrained"] is False and embeddings["model_version"] == config_one["model_version"]
    assert embeddings["serving_users_without_training_edges"] >= new_users[0]
    # the kept model embeds only what batch 2 changed and carries the rest from batch 1's table
    assert embeddings["embedding_mode"] == "incremental" and embeddings["embeddings_carried_from"] == first
    for framing in ("target", "serving"):
        embedded, carried = embeddings[f"{framing}_users_embedded"], embeddings[f"{framing}_users_carried"]
        assert embedded >= new_users[0] and carried > 0
        assert embedded + carried == embeddings[f"{framing}_users"]
        assert 0 <= embeddings[f"{framing}_carried_cosine_distance_mean"] < 1
    carried_rows = duckdb.sql(
        f"SELECT count(*), count(*) FILTER (WHERE a.embedding = b.embedding) "
        f"FROM read_parquet('{users_two}') a JOIN read_parquet('{users_one}') b USING (framing, user_id) "
        f"WHERE a.edges = b.edges"
    ).fetchall()[0]
    assert carried_rows[1] >= embeddings["serving_users_carried"] > 0
    # the kept XGBoost model was evaluated on the (bounded) validation users and says which
    assert "validation users" in _metadata(results[second], "xgboost_model")["evaluation_users"]


def test_the_third_batch_retrains_after_two_batches(lake):
    _, results, (first, _, third) = lake
    for asset in MODELS:
        metadata = _metadata(results[third], asset)
        assert metadata["retrained"] is True and metadata["trained_on_batch"] == third
        assert metadata["retrain_reason"].startswith(
            f"batches: 2 batches since the model was fitted on {first}"
        )
        assert metadata["model_version"].split("-", 1)[1].startswith(third)
    assert _metadata(results[third], "user_embeddings")["embedding_mode"] == "full: model retrained"


def test_a_drift_threshold_near_zero_retrains_naming_drift(lake):
    _, results, _ = lake
    metadata = _metadata(results["drift"], "xgboost_model")
    assert metadata["retrained"] is True and metadata["retrain_reason"].startswith("drift: ")
    assert metadata["drift_psi_max"] > 0


def test_force_retrain_refits_when_no_rule_fires(lake):
    locations, results, (_, _, third) = lake
    for asset in MODELS:
        metadata = _metadata(results["forced"], asset)
        assert metadata["retrained"] is True and "force_retrain" in metadata["retrain_reason"]
    card = json.loads((_folder(locations, "xgboost_model", third) / MODEL_CARD_FILE).read_text())
    assert card["retrain"]["reason"] == "forced by the run config (force_retrain)"


def test_the_graph_is_updated_from_the_previous_batchs_stored_graph(lake):
    """Batch 1 builds the graph from the history; later batches (kept model or retrained) update the
    state stored in the previous model folder, and every stored state equals a full build."""
    locations, results, partitions = lake
    first_build = _metadata(results[partitions[0]], "graphsage_model")
    assert first_build["graph_build"] == "full"
    assert first_build["graph_build_reason"] == "full: no earlier GraphSAGE model folder"
    for previous, batch in itertools.pairwise(partitions):
        metadata = _metadata(results[batch], "graphsage_model")
        assert metadata["graph_build"] == "incremental", metadata["graph_build_reason"]
        assert metadata["graph_build_reason"].startswith(
            f"incremental: the graph stored in batch {previous} plus batch(es) {batch} ("
        )
        assert 0 < metadata["graph_users_recomputed"] < first_build["graph_users_recomputed"] + 200
    conn = duckdb.connect()
    for batch in partitions:
        snapshot = CleanSnapshot(
            orders=[
                uri for key, uri in locations.partitions("clean", "clean_orders").items() if key <= batch
            ],
            order_products=[
                uri
                for key, uri in locations.partitions("clean", "clean_order_products").items()
                if key <= batch
            ],
            products=locations.partition_uri("clean", "clean_products", batch),
            aisles="",
            departments="",
        )
        stored = GraphState.read(_folder(locations, "graphsage_model", batch))
        full = build_state(conn, snapshot).state
        assert stored.edges.equals(full.edges) and stored.users.equals(full.users), batch
