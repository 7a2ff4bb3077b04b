"""A kept GraphSAGE model's embeddings for a new batch: changed nodes embedded, the rest carried."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from instarec_assets.ml.graphsage import GraphSageModel, GraphSageParams, embed_graph, embedding_tables
from instarec_assets.ml.graphsage.artifacts import TrainingNodes
from instarec_assets.ml.graphsage.incremental import PreviousEmbeddings, carried_embedding_tables, embed_nodes
from instarec_assets.ml.graphsage.synthetic import planted_graph


@pytest.fixture(scope="module")
def setup():
    """The current graph, the previous batch's graph (the last 40 users absent: no edges; and user
    3's edges but one), an untrained but fixed model and its encoding."""
    graph = planted_graph(n_users=300, n_communities=3, aisles_per_community=2, products_per_aisle=10, seed=2)
    encoding = graph.fit_encoding()
    torch.manual_seed(0)
    model = GraphSageModel(GraphSageModel.architecture_for(GraphSageParams(), encoding)).eval()
    user3 = np.flatnonzero(graph.edge_user == 3)
    keep = (graph.edge_user < graph.n_users - 40) & ~np.isin(np.arange(graph.n_edges), user3[1:])
    return graph, graph.subgraph_edges(keep), encoding, model


def _previous(model, encoding, earlier, drop_users: np.ndarray):
    users, products, _ = embedding_tables(model, encoding, {"target": earlier}, TrainingNodes.of(earlier))
    users = users.filter(pc.invert(pc.is_in(users["user_id"], pa.array(drop_users.astype(np.int32)))))
    return users, products


def test_embedding_a_subset_gives_the_whole_graph_embedding_of_those_nodes(setup):
    graph, _, encoding, model = setup
    full = embed_graph(model, graph, encoding)
    users = np.zeros(graph.n_users, dtype=bool)
    products = np.zeros(graph.n_products, dtype=bool)
    users[[0, 5, 250]] = True
    products[[1, 7]] = True
    some_users, some_products = embed_nodes(model, graph, encoding, users, products, threads=1)
    np.testing.assert_allclose(some_users, full.users[users], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(some_products, full.products[products], rtol=1e-5, atol=1e-6)


def test_unchanged_nodes_are_carried_byte_for_byte_and_changed_ones_embedded(setup):
    graph, earlier, encoding, model = setup
    new_users = graph.user_ids[-40:]
    users_before, products_before = _previous(model, encoding, earlier, new_users)
    batch_users = np.array([graph.user_ids[10]])  # ordered in this batch, edge count unchanged
    users, products, stats = carried_embedding_tables(
        model,
        encoding,
        {"target": graph},
        TrainingNodes.of(earlier),
        {"target": PreviousEmbeddings.from_arrow(users_before, "user_id")},
        {"target": PreviousEmbeddings.from_arrow(products_before, "product_id")},
        batch_user_ids=batch_users,
        threads=1,
    )
    full = embed_graph(model, graph, encoding)
    vectors = np.stack(users.column("embedding").to_numpy(zero_copy_only=False))
    before = dict(
        zip(
            users_before.column("user_id").to_pylist(),
            users_before.column("embedding").to_numpy(zero_copy_only=False),
            strict=True,
        )
    )
    ids = users.column("user_id").to_numpy()
    changed = np.isin(ids, np.concatenate([new_users, batch_users, [graph.user_ids[3]]]))
    for row in np.flatnonzero(~changed):
        assert vectors[row].tobytes() == np.asarray(before[ids[row]], dtype=np.float32).tobytes()
    np.testing.assert_allclose(vectors[changed], full.users[changed], rtol=1e-5, atol=1e-6)
    assert stats["target"]["embedded_users"] == 42 and stats["target"]["carried_users"] == graph.n_users - 42
    # products that gained buyers (the new users' purchases) are re-embedded, the rest carried
    product_vectors = np.stack(products.column("embedding").to_numpy(zero_copy_only=False))
    gained = graph.product_degree != earlier.product_degree
    np.testing.assert_allclose(product_vectors[gained], full.products[gained], rtol=1e-5, atol=1e-6)
    assert stats["target"]["embedded_products"] == int(gained.sum())
    # carried vectors differ from a full re-embed only through changed neighbours, measured
    assert 0 < stats["target"]["exactness_sample"] <= graph.n_users + graph.n_products
    assert (
        0
        <= stats["target"]["carried_cosine_distance_mean"]
        <= stats["target"]["carried_cosine_distance_max"]
        < 1
    )
    assert (
        users.schema
        == embedding_tables(model, encoding, {"target": graph}, TrainingNodes.of(earlier))[0].schema
    )


def test_carrying_twice_gives_the_same_tables(setup):
    graph, earlier, encoding, model = setup
    users_before, products_before = _previous(model, encoding, earlier, graph.user_ids[-40:])
    runs = [
        carried_embedding_tables(
            model,
            encoding,
            {"target": graph},
            TrainingNodes.of(earlier),
            {"target": PreviousEmbeddings.from_arrow(users_before, "user_id")},
            {"target": PreviousEmbeddings.from_arrow(products_before, "product_id")},
            batch_user_ids=np.array([graph.user_ids[10]]),
            threads=1,
        )
        for _ in range(2)
    ]
    assert runs[0][0].equals(runs[1][0]) and runs[0][1].equals(runs[1][1])
    assert (
        runs[0][2]["target"]["carried_cosine_distance_max"]
        == runs[1][2]["target"]["carried_cosine_distance_max"]
    )
