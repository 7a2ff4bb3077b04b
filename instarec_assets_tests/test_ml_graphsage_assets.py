"""graphsage_model, user_embeddings and product_embeddings as Dagster assets on a generated lake.

Two generated weekly batches (the second brings new users and new products) go through raw, clean,
the curated features and the graph assets; the tests read what the assets stored and use it the way
the XGBoost features and the recommendations do.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, define_asset_job

from instarec_assets.assets.checks import clean_checks
from instarec_assets.assets.clean import CLEAN_STEPS
from instarec_assets.assets.curated import clean_snapshot, curated_features_step
from instarec_assets.assets.graph import graphsage_step
from instarec_assets.assets.raw import raw_landing_files
from instarec_assets.definitions import build_resources
from instarec_assets.generate import generate_dataset
from instarec_assets.lake.feature_delta import feature_source
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.graphsage import (
    CONFIG_FILE,
    STATE_DICT_FILE,
    build_graph,
    embed_graph,
    explore_from_lake,
    load_embedding_table,
    load_graphsage,
    similarity_feature,
    similarity_for_rows,
    with_similarity_sql,
)
from instarec_assets.partitions import landing_batches
from instarec_assets.pipeline.runner import register_batch
from instarec_assets.resources import RetrainPolicyResource

pytestmark = pytest.mark.slow

JOB = "graph_job"
RUN_CONFIG = {"ops": {"graphsage_step": {"config": {"epochs": 3, "edges_per_epoch": 0, "device": "cpu"}}}}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Two batches materialised through the graph assets; yields (locations, instance, results, partitions)."""
    home = tmp_path_factory.mktemp("graph-home")
    summary = generate_dataset(home / "generated", users=200, seed=11, batches=2)
    locations = LakeLocations(env="local", home=str(home))
    defs = Definitions(
        assets=[raw_landing_files, *CLEAN_STEPS, curated_features_step, graphsage_step],
        asset_checks=clean_checks(),
        jobs=[define_asset_job(JOB, selection=AssetSelection.all(), partitions_def=landing_batches)],
        # Retrain every batch: these tests read a model trained on the latest batch (keeping one under
        # the retrain policy is test_assets_retrain.py's).
        resources={**build_resources(locations), "retrain_policy": RetrainPolicyResource(every_batches=1)},
    )
    instance = DagsterInstance.ephemeral()
    results = {}
    for batch in summary.batches:
        target = Path(locations.landing_partition_uri(batch.partition))
        target.parent.mkdir(parents=True, exist_ok=True)
        batch.folder.rename(target)
        register_batch(instance, batch.partition)
        results[batch.partition] = defs.resolve_job_def(JOB).execute_in_process(
            partition_key=batch.partition, instance=instance, run_config=RUN_CONFIG, raise_on_error=False
        )
    yield locations, instance, results, [batch.partition for batch in summary.batches]
    instance.dispose()


def _model_dir(locations: LakeLocations, partition: str) -> Path:
    year, month, day = partition.split("-")
    return Path(
        locations.zone_uri("curated"),
        "models",
        "graphsage_model",
        f"year={year}",
        f"month={month}",
        f"day={day}",
    )


def test_graph_assets_materialise_for_both_batches(lake):
    _, _, results, _ = lake
    for partition, result in results.items():
        assert result.success, partition
        materialized = {
            event.asset_key.to_user_string() for event in result.get_asset_materialization_events()
        }
        assert {"graphsage_model", "user_embeddings", "product_embeddings"} <= materialized


def test_model_is_a_state_dict_and_a_config_with_metrics_and_plots(lake):
    locations, instance, _, partitions = lake
    folder = _model_dir(locations, partitions[-1])
    assert {STATE_DICT_FILE, CONFIG_FILE, "loss_curve.png"} <= {path.name for path in folder.iterdir()}
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["data_partition"] == partitions[-1] and config["graph"]["framing"] == "target"
    _, params, encoding, _ = load_graphsage(folder)
    assert params.epochs == 3 and len(encoding.aisle_ids) == 134
    metadata = instance.get_latest_materialization_event(
        AssetKey("graphsage_model")
    ).asset_materialization.metadata
    assert metadata["auc"].value > 0.6
    assert metadata["cosine_positive_mean"].value > metadata["cosine_negative_mean"].value
    for name in ("r2_frequency", "final_loss", "seconds_per_epoch"):
        assert np.isfinite(metadata[name].value)
    assert metadata["plot_loss_curve"].value.startswith("![loss_curve](data:image/png;base64,")
    assert metadata["model_version"].value.startswith(f"graphsage-{partitions[-1]}")


def test_embeddings_cover_both_framings_and_new_users_and_products(lake):
    locations, _, _, partitions = lake
    latest = partitions[-1]
    users_uri = locations.partition_uri("curated", "user_embeddings", latest)
    products_uri = locations.partition_uri("curated", "product_embeddings", latest)
    rows = duckdb.sql(
        f"SELECT framing, count(*), min(len(embedding)), max(len(embedding)) "
        f"FROM read_parquet('{users_uri}') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [row[0] for row in rows] == ["serving", "target"]
    assert all(row[2] == row[3] == 64 for row in rows)
    assert rows[0][1] >= rows[1][1]  # serving: every user with a known order; target: with history
    # the second batch's new users are embedded (the first partition never saw them)
    first_uri = locations.partition_uri("curated", "user_embeddings", partitions[0])
    new_users = duckdb.sql(
        f"SELECT count(*), bool_and(list_sum(embedding) IS NOT NULL) FROM read_parquet('{users_uri}') "
        f"WHERE framing = 'serving' AND user_id NOT IN (SELECT user_id FROM read_parquet('{first_uri}'))"
    ).fetchall()[0]
    assert new_users[0] > 0 and new_users[1]
    # every product of the current catalog has an embedding; most were never bought (cold start)
    products = duckdb.sql(
        f"SELECT count(*), count(*) FILTER (WHERE edges = 0), bool_and(list_sum(embedding) IS NOT NULL) "
        f"FROM read_parquet('{products_uri}') WHERE framing = 'serving'"
    ).fetchall()[0]
    current = duckdb.sql(
        "SELECT count(DISTINCT product_id) FROM read_parquet("
        f"'{locations.partition_uri('clean', 'clean_products', latest)}') WHERE is_current"
    ).fetchall()[0][0]
    assert products[0] == current and products[1] > 0 and products[2]


def test_new_products_of_the_second_batch_sit_near_their_aisle(lake):
    locations, _, _, partitions = lake
    first, latest = partitions
    new_products = duckdb.sql(
        "SELECT product_id, aisle_id FROM read_parquet("
        f"'{locations.partition_uri('clean', 'clean_products', latest)}') WHERE is_current "
        "AND product_id NOT IN (SELECT product_id FROM read_parquet("
        f"'{locations.partition_uri('clean', 'clean_products', first)}'))"
    ).fetchall()
    assert new_products
    conn = duckdb.connect()
    table = load_embedding_table(
        conn, locations.partition_uri("curated", "product_embeddings", latest), "serving", "product_id"
    )
    aisles = dict(
        duckdb.sql(
            "SELECT product_id, aisle_id FROM read_parquet("
            f"'{locations.partition_uri('curated', 'product_embeddings', latest)}') WHERE framing = 'serving'"
        ).fetchall()
    )
    aisle_of = np.array([aisles[int(product_id)] for product_id in table.ids])
    wins = 0
    for product_id, aisle_id in new_products:
        vector = table.vectors[table.index_of(np.array([product_id]))[0]]
        similarity = table.vectors @ vector
        same = (aisle_of == aisle_id) & (table.ids != product_id)
        wins += similarity[same].mean() > similarity[aisle_of != aisle_id].mean()
    assert wins == len(new_products)


def test_similarity_feature_and_explore_items_from_the_stored_assets(lake, tmp_path):
    locations, _, _, partitions = lake
    latest = partitions[-1]
    conn = duckdb.connect()
    users_uri = locations.partition_uri("curated", "user_embeddings", latest)
    products_uri = locations.partition_uri("curated", "product_embeddings", latest)
    for feature_set in ("training_set", "inference_set"):
        rows = conn.sql(
            "SELECT user_id, product_id, eval_set FROM "
            + feature_source(conn, locations.partition_uri("curated", feature_set, latest))
        ).df()
        values = similarity_for_rows(
            conn, users_uri, products_uri, rows.user_id, rows.product_id, rows.eval_set.to_numpy()
        )
        # every candidate is a (user, product) of the user's history: both have embeddings, except the
        # earlier targets' rows, which no graph holds without their target order (missing, not leaked)
        earlier = (rows.eval_set == "train_earlier").to_numpy()
        assert earlier.any() == (feature_set == "training_set") and np.isnan(values[earlier]).all()
        assert (
            len(rows) and np.isfinite(values[~earlier]).all() and (np.abs(values[~earlier]) <= 1.0001).all()
        )
    target = similarity_feature(
        rows.user_id.to_numpy(),
        rows.product_id.to_numpy(),
        load_embedding_table(conn, users_uri, "target", "user_id"),
        load_embedding_table(conn, products_uri, "target", "product_id"),
    )
    is_test = (rows.eval_set == "test").to_numpy()
    np.testing.assert_array_equal(values[is_test], target[is_test])
    # the same feature joined in DuckDB
    inference_uri = locations.partition_uri("curated", "inference_set", latest)
    in_sql = conn.execute(
        with_similarity_sql(
            "SELECT user_id, product_id, eval_set FROM " + feature_source(conn, inference_uri)
        )
        + " ORDER BY eval_set, user_id, product_id",
        {"user_embeddings": users_uri, "product_embeddings": products_uri},
    ).df()
    ordered = rows.assign(expected=values).sort_values(["eval_set", "user_id", "product_id"])
    np.testing.assert_allclose(in_sql.gs_similarity.to_numpy(), ordered.expected.to_numpy(), atol=1e-5)
    features_uri = locations.partition_uri("curated", "user_product_features", latest)
    staged = explore_from_lake(conn, users_uri, products_uri, features_uri, tmp_path / "explore.parquet")
    explore = conn.sql(f"SELECT * FROM read_parquet('{staged.path}')").df()
    bought = conn.sql(
        "SELECT user_id, product_id FROM " + feature_source(conn, features_uri) + " WHERE framing = 'serving'"
    ).df()
    serving_users = conn.sql(f"SELECT count(*) FROM read_parquet('{users_uri}') WHERE framing = 'serving'")
    assert explore.user_id.nunique() == serving_users.fetchall()[0][0]
    assert explore.groupby("user_id").size().max() == 2
    assert not explore.merge(bought, on=["user_id", "product_id"]).shape[0]
    # chosen users (a delta batch's) read only their own history and get exactly their full-run rows
    chosen = np.sort(explore.user_id.unique())[::3]
    some = explore_from_lake(
        conn, users_uri, products_uri, features_uri, tmp_path / "some.parquet", user_ids=chosen
    )
    subset = conn.sql(f"SELECT * FROM read_parquet('{some.path}')").df()
    expected = explore[explore.user_id.isin(chosen)].reset_index(drop=True)
    pd.testing.assert_frame_equal(subset.reset_index(drop=True), expected)


def test_a_graph_of_the_next_batch_is_embedded_by_the_earlier_model(lake):
    """Inductive across partitions: the first batch's model embeds the second batch's graph."""
    locations, _, _, partitions = lake
    first, latest = partitions
    model, _, encoding, _ = load_graphsage(_model_dir(locations, first))
    conn = duckdb.connect()
    earlier = build_graph(conn, _snapshot(locations, first), "serving")
    later = build_graph(conn, _snapshot(locations, latest), "serving")
    embedded = embed_graph(model, later, encoding)
    new_users = ~np.isin(later.user_ids, earlier.user_ids)
    new_products = ~np.isin(later.product_ids, earlier.product_ids)
    assert new_users.any() and new_products.any()
    assert np.isfinite(embedded.users[new_users]).all() and np.isfinite(embedded.products[new_products]).all()
    assert np.abs(embedded.users[new_users]).sum(axis=1).min() > 0


def _snapshot(locations: LakeLocations, partition: str):
    """The clean zone as of a batch, as the graph step receives it."""

    def upto(table: str) -> list[str]:
        return [uri for key, uri in locations.partitions("clean", table).items() if key <= partition]

    return clean_snapshot(
        upto("clean_orders"),
        upto("clean_order_products"),
        *(
            locations.partition_uri("clean", table, partition)
            for table in ("clean_products", "clean_aisles", "clean_departments")
        ),
    )
