"""GraphSAGE logic on small graphs with planted structure, on the CPU, in seconds.

Users belong to communities that buy from their own aisles; departments cut across communities, so
only the aisle (and the purchases) tell a product's community.
"""

from __future__ import annotations

import json
import pickle
import zipfile

import duckdb
import numpy as np
import pytest
import torch

from instarec_assets.compute import usable_cpus
from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.ml.graphsage import (
    CONFIG_FILE,
    STATE_DICT_FILE,
    BipartiteGraph,
    EmbeddingTable,
    GraphSageModel,
    GraphSageParams,
    build_graph,
    embed_graph,
    embedding_tables,
    explore_items,
    graph_from_pairs,
    load_graphsage,
    save_graphsage,
    similarity_feature,
    train_and_report,
    train_graphsage,
)
from instarec_assets.ml.graphsage.config import FeatureEncoding
from instarec_assets.ml.graphsage.graph import _index_of
from instarec_assets.ml.graphsage.sampling import CSR, NeighborSampler, stable_order
from instarec_assets.ml.graphsage.synthetic import planted_graph
from instarec_assets.ml.graphsage.train import GraphTensors, reproducible_torch

FAST = GraphSageParams(epochs=5, batch_size=256, edges_per_epoch=None, learning_rate=0.01, seed=0)


@pytest.fixture(scope="module")
def graph() -> BipartiteGraph:
    return planted_graph(n_users=600, n_communities=3, aisles_per_community=2, products_per_aisle=30, seed=1)


@pytest.fixture(scope="module")
def trained(graph):
    return train_graphsage(graph, FAST, device="cpu")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


# --- sampling ---------------------------------------------------------------------------------------


def test_csr_sampling_keeps_small_neighbourhoods_whole_and_caps_large_ones():
    # node 0: neighbours 10, 11 (degree 2); node 1: 20..29 (degree 10); node 2: none
    rows = np.array([0, 0] + [1] * 10)
    cols = np.array([10, 11, *range(20, 30)])
    csr = CSR.from_edges(rows, cols, n_rows=3)
    generator = torch.Generator().manual_seed(0)
    owner, neighbours = csr.sample(torch.tensor([0, 1, 2]), fanout=4, generator=generator)
    assert sorted(neighbours[owner == 0].tolist()) == [10, 11]
    assert (owner == 1).sum() == 4 and set(neighbours[owner == 1].tolist()) <= set(range(20, 30))
    assert (owner == 2).sum() == 0


@pytest.mark.parametrize("n_rows", [50, 70_000])  # 16-bit keys (radix sort) and wider ones
def test_csr_rows_equal_a_csr_built_from_those_rows_edges(n_rows):
    rng = np.random.default_rng(3)
    rows = rng.integers(0, n_rows, 5_000)
    cols = rng.integers(0, 40, 5_000)
    np.testing.assert_array_equal(stable_order(rows, n_rows), np.argsort(rows, kind="stable"))
    assert stable_order(np.sort(rows), n_rows) is None
    csr = CSR.from_edges(rows, cols, n_rows)
    reference = np.argsort(rows, kind="stable")
    assert torch.equal(csr.nbr, torch.from_numpy(cols[reference]))
    picked = np.sort(rng.choice(n_rows, n_rows // 3, replace=False))
    local = np.full(n_rows, -1)
    local[picked] = np.arange(picked.size)
    keep = local[rows] >= 0
    expected = CSR.from_edges(local[rows[keep]], cols[keep], picked.size)
    sub = csr.rows(picked)
    assert torch.equal(sub.ptr, expected.ptr) and torch.equal(sub.nbr, expected.nbr)
    shuffled = rng.permutation(picked)  # any order: rows gathered by index
    local[shuffled] = np.arange(shuffled.size)
    expected = CSR.from_edges(local[rows[keep]], cols[keep], shuffled.size)
    sub = csr.rows(shuffled)
    assert torch.equal(sub.ptr, expected.ptr) and torch.equal(sub.nbr, expected.nbr)
    whole = csr.rows(np.arange(n_rows))
    assert torch.equal(whole.ptr, csr.ptr) and torch.equal(whole.nbr, csr.nbr)
    assert csr.rows(np.array([], dtype=np.int64)).nbr.numel() == 0


@pytest.mark.parametrize("spread", [1, 10_000_000])  # a dense lookup table and binary search
def test_index_of_finds_the_first_position_or_minus_one(spread):
    rng = np.random.default_rng(5)
    ids = np.sort(rng.integers(0, 1_000, 400)) * spread  # repeats included
    values = np.concatenate([ids, rng.integers(-5, 1_010, 2_000) * spread, [-(10**12), 10**12]])
    position = np.clip(np.searchsorted(ids, values), 0, ids.size - 1)
    expected = np.where(ids[position] == values, position, -1)
    np.testing.assert_array_equal(_index_of(ids, values), expected)
    assert (_index_of(ids[:0], values) == -1).all()


def test_sampled_forward_with_large_fanouts_equals_full_graph_inference():
    graph = planted_graph(n_users=120, products_per_aisle=8, seed=4)
    graph = graph.subgraph_edges(graph.edge_product != 0)  # product 0 has no edges: cold start
    encoding = graph.fit_encoding()
    params = GraphSageParams(fanouts=(10_000, 10_000))
    torch.manual_seed(0)
    model = GraphSageModel(GraphSageModel.architecture_for(params, encoding)).eval()
    tensors = GraphTensors.build(graph, encoding)
    full_users, full_products = tensors.embed(model)  # sparse CSR SpMM path
    users, products = torch.tensor([0, 3, 3, 17]), torch.tensor([0, 5, 9, 5, 30])
    sub = tensors.sampler(params.fanouts).sample(users, products)
    with torch.no_grad():
        h_user, h_product = model.encoder.forward_sampled(sub, tensors.features)  # CSR on the CPU
        gather_user, gather_product = model.encoder.forward_sampled(sub, tensors.features, sparse=False)
        edge_users, edge_products = model.encoder.forward_full(
            tensors.features, tensors.user_adj.edge_index(), tensors.product_adj.edge_index()
        )
    torch.testing.assert_close(h_user[sub.seed_users], full_users[users])
    torch.testing.assert_close(h_product[sub.seed_products], full_products[products])
    torch.testing.assert_close(gather_user, h_user)
    torch.testing.assert_close(gather_product, h_product)
    torch.testing.assert_close(edge_users, full_users)
    torch.testing.assert_close(edge_products, full_products)


def test_sampler_respects_fanouts_excluded_pairs_and_hidden_products(graph):
    tensors = GraphTensors.build(graph, graph.fit_encoding())
    sampler = NeighborSampler(tensors.user_adj, tensors.product_adj, (3, 2))
    users = torch.from_numpy(graph.edge_user[:64])
    products = torch.from_numpy(graph.edge_product[:64])
    hidden = products[:5].unique()
    sub = sampler.sample(
        users,
        products,
        torch.Generator().manual_seed(0),
        exclude_pairs=(users, products),
        hidden_products=hidden,
    )
    hop1_to_user = sub.to_user[:, : sub.to_user_hop_ends[0]]
    hop1_to_product = sub.to_product[:, : sub.to_product_hop_ends[0]]
    # at most `fanout` sampled neighbours per destination at each hop
    assert torch.bincount(hop1_to_user[1]).max() <= 3
    assert torch.bincount(sub.to_user[1, sub.to_user_hop_ends[0] :]).max() <= 2
    # no supervision edge in hop 1, in either direction
    pairs = set(zip(users.tolist(), products.tolist(), strict=True))
    sampled = {(int(sub.user_ids[u]), int(sub.product_ids[p])) for p, u in hop1_to_user.T.tolist()} | {
        (int(sub.user_ids[u]), int(sub.product_ids[p])) for u, p in hop1_to_product.T.tolist()
    }
    assert not sampled & pairs
    # hidden products receive no messages
    hidden_local = {int(sub.seed_products[(products == h).nonzero()[0, 0]]) for h in hidden}
    assert not hidden_local & set(hop1_to_product[1].tolist())
    # seeds come first and map back to the requested ids
    assert torch.equal(sub.user_ids[sub.seed_users], users)
    assert torch.equal(sub.product_ids[sub.seed_products], products)
    assert sub.user_counts[0] == users.unique().numel()


# --- training ---------------------------------------------------------------------------------------


def test_training_loss_falls(trained):
    losses = trained.history["epoch_loss"]
    assert len(losses) == FAST.epochs
    assert losses[-1] < losses[0] - 0.1
    steps = trained.history["step_loss"]
    assert np.mean(steps[-5:]) < np.mean(steps[:5])


def test_held_out_auc_and_cosine_separate_positive_from_negative_pairs(trained):
    metrics = trained.metrics
    assert metrics["held_out_edges"] > 100
    assert metrics["auc"] > 0.75
    assert metrics["auc_degree_negatives"] > 0.7
    assert metrics["cosine_positive_mean"] > metrics["cosine_negative_mean"] + 0.2
    assert np.isfinite(metrics["r2_frequency"])
    assert trained.training["mode"] == "sampled" and trained.training["device"] == "cpu"


def test_embeddings_recover_the_planted_communities(graph, trained):
    embedded = embed_graph(trained.model, graph, trained.encoding)
    similarity = _cosine(embedded.users, embedded.products)
    same = graph.user_community[:, None] == graph.product_community[None, :]
    assert similarity[same].mean() > similarity[~same].mean() + 0.3


def test_training_is_deterministic_for_a_seed(graph):
    """Same graph, seed and thread count: the same batches, negatives and samples, and bit-identical
    losses, weights and embeddings (deterministic algorithms: with two threads, torch's sparse
    aggregation otherwise sums its backward pass in a varying order)."""
    params = GraphSageParams(epochs=1, batch_size=1024, edges_per_epoch=3000, seed=7)
    first = train_graphsage(graph, params, device="cpu", threads=2)
    second = train_graphsage(graph, params, device="cpu", threads=2)
    assert first.history["step_loss"] == second.history["step_loss"]
    assert first.training["threads"] == 2 and first.training["seed"] == 7
    assert first.training["graph_sha256"] == graph.fingerprint()
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    embedded = [embed_graph(fit.model, graph, fit.encoding, threads=2) for fit in (first, second)]
    assert np.array_equal(embedded[0].users, embedded[1].users)
    assert np.array_equal(embedded[0].products, embedded[1].products)
    other = train_graphsage(graph, GraphSageParams(epochs=1, batch_size=1024, edges_per_epoch=3000, seed=8))
    assert not np.allclose(first.history["step_loss"], other.history["step_loss"], rtol=1e-3)
    tensors = GraphTensors.build(graph, graph.fit_encoding())
    users, products = torch.arange(50), torch.arange(50) % graph.n_products
    samples = [
        tensors.sampler((4, 3)).sample(users, products, torch.Generator().manual_seed(3)) for _ in range(2)
    ]
    assert torch.equal(samples[0].to_user, samples[1].to_user)
    assert torch.equal(samples[0].product_ids, samples[1].product_ids)


def test_reproducible_torch_restores_the_previous_settings():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with reproducible_torch(1) as count:
        assert count == 1 == torch.get_num_threads()
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    with reproducible_torch(0) as count:
        assert count == usable_cpus()


def test_pairs_in_any_order_give_the_same_graph(graph):
    """The edges of a graph built from pairs are sorted by (user, product): a DuckDB aggregation
    that returns its groups in another order builds the same arrays, so the same model."""
    shuffle = np.random.default_rng(2).permutation(graph.n_edges)
    nodes = np.random.default_rng(3).permutation(graph.n_users)
    products = np.random.default_rng(4).permutation(graph.n_products)
    again = graph_from_pairs(
        graph.user_ids[graph.edge_user[shuffle]],
        graph.product_ids[graph.edge_product[shuffle]],
        graph.edge_weight[shuffle],
        graph.user_ids[nodes],
        graph.user_orders[nodes],
        graph.user_days_between[nodes],
        graph.product_ids[products],
        graph.product_aisle_ids[products],
        graph.product_department_ids[products],
    )
    keys = again.edge_keys()
    assert (keys[1:] > keys[:-1]).all()
    order = np.argsort(graph.edge_keys())
    np.testing.assert_array_equal(again.edge_user, graph.edge_user[order])
    np.testing.assert_array_equal(again.edge_weight, graph.edge_weight[order])
    canonical = graph.subgraph_edges(order)
    assert again.fingerprint() == canonical.fingerprint()
    assert again.fingerprint() != graph.subgraph_edges(np.arange(1, graph.n_edges)).fingerprint()


def test_train_and_report_twice_writes_the_same_model_files(graph, tmp_path):
    """state dict and config bit-identical; the timings (wall clock) live in their own file."""
    params = GraphSageParams(epochs=1, batch_size=512, edges_per_epoch=2000, seed=3)
    reports = [
        train_and_report(graph, tmp_path / f"run{run}", "2025-01-06", params=params, device="cpu", threads=2)
        for run in range(2)
    ]
    for name in (STATE_DICT_FILE, CONFIG_FILE):
        assert (reports[0].model_dir / name).read_bytes() == (reports[1].model_dir / name).read_bytes(), name
    config = reports[0].config
    assert config["training"]["seed"] == 3 and config["training"]["threads"] == 2
    assert config["training"]["graph_sha256"] == graph.fingerprint()
    assert "train_seconds" not in config["metrics"] and "epoch_seconds" not in config["history"]
    timings = json.loads((reports[0].model_dir / config["timings_file"]).read_text())
    assert timings["metrics"]["train_seconds"] == reports[0].metrics["train_seconds"] > 0
    tables = [
        embedding_tables(report.trained.model, report.trained.encoding, {"target": graph}, graph, threads=2)
        for report in reports
    ]
    assert tables[0][0].equals(tables[1][0]) and tables[0][1].equals(tables[1][1])


def test_full_batch_mode_trains_too(graph):
    params = GraphSageParams(mode="full", full_epochs=40, learning_rate=0.02, seed=0)
    result = train_graphsage(graph, params, device="cpu")
    assert result.training["mode"] == "full"
    assert result.history["epoch_loss"][-1] < result.history["epoch_loss"][0]
    assert result.metrics["auc"] > 0.7


# --- inductive embeddings ---------------------------------------------------------------------------


def _with_new_nodes(graph: BipartiteGraph, new_product_aisle: int, new_user_products: np.ndarray):
    """The graph plus one product with no purchases (in `new_product_aisle`) and one new user who
    bought `new_user_products` (indices into graph.product_ids)."""
    new_product_id = int(graph.product_ids.max()) + 1000
    new_user_id = int(graph.user_ids.max()) + 1000
    return (
        BipartiteGraph(
            user_ids=np.append(graph.user_ids, new_user_id),
            product_ids=np.append(graph.product_ids, new_product_id),
            edge_user=np.concatenate([graph.edge_user, np.full(new_user_products.size, graph.n_users)]),
            edge_product=np.concatenate([graph.edge_product, new_user_products]),
            edge_weight=np.concatenate([graph.edge_weight, np.ones(new_user_products.size, np.float32)]),
            user_orders=np.append(graph.user_orders, 2.0).astype(np.float32),
            user_days_between=np.append(graph.user_days_between, 7.0).astype(np.float32),
            product_aisle_ids=np.append(graph.product_aisle_ids, new_product_aisle),
            # the department its aisle's products have (synthetic.planted_graph: aisle % 3)
            product_department_ids=np.append(graph.product_department_ids, (new_product_aisle - 1) % 3 + 1),
        ),
        new_user_id,
        new_product_id,
    )


@pytest.mark.parametrize("aisle", [1, 3, 6])  # communities 0, 1, 2 own aisles 1-2, 3-4, 5-6
def test_a_new_product_is_embedded_near_the_products_of_its_aisle(graph, trained, aisle):
    community = (aisle - 1) // 2
    bigger, _, new_product_id = _with_new_nodes(graph, aisle, np.array([], dtype=np.int64))
    embedded = embed_graph(trained.model, bigger, trained.encoding)
    assert embedded.products.shape == (graph.n_products + 1, FAST.embedding_dim)
    new_vector = embedded.products[bigger.product_ids == new_product_id]
    assert embedded.product_degree[-1] == 0 and np.isfinite(new_vector).all()
    similarity = _cosine(new_vector, embedded.products[:-1])[0]
    by_aisle = {
        a: similarity[graph.product_aisle_ids == a].mean() for a in np.unique(graph.product_aisle_ids)
    }
    other_communities = [value for a, value in by_aisle.items() if (a - 1) // 2 != community]
    assert by_aisle[aisle] > max(other_communities) + 0.1
    # the users it scores highest are those of its aisle's community
    scores = embedded.users[:-1] @ new_vector[0]
    by_community = [scores[graph.user_community == c].mean() for c in range(3)]
    assert int(np.argmax(by_community)) == community


def test_a_new_user_with_two_purchases_gets_explore_items_from_their_community(graph, trained):
    community = 2
    bought = np.flatnonzero(graph.product_community == community)[[0, 5]]
    bigger, new_user_id, _ = _with_new_nodes(graph, 1, bought)
    embedded = embed_graph(trained.model, bigger, trained.encoding)
    users = EmbeddingTable.from_vectors(embedded.user_ids, embedded.users)
    products = EmbeddingTable.from_vectors(embedded.product_ids, embedded.products)
    items = explore_items(
        users,
        products,
        bigger.user_ids[bigger.edge_user],
        bigger.product_ids[bigger.edge_product],
        k=5,
    ).to_pandas()
    mine = items[items.user_id == new_user_id]
    assert len(mine) == 5 and not set(mine.product_id) & set(graph.product_ids[bought].tolist())
    position = np.searchsorted(bigger.product_ids, mine.product_id.to_numpy())
    community_of = np.append(graph.product_community, -1)
    assert (community_of[position] == community).mean() >= 0.8


# --- explore items and the similarity feature --------------------------------------------------------


def test_explore_items_are_never_bought_ranked_and_mostly_in_the_users_community(graph, trained):
    embedded = embed_graph(trained.model, graph, trained.encoding)
    users = EmbeddingTable.from_vectors(embedded.user_ids, embedded.users)
    products = EmbeddingTable.from_vectors(embedded.product_ids, embedded.products)
    bought_users = graph.user_ids[graph.edge_user]
    bought_products = graph.product_ids[graph.edge_product]
    items = explore_items(users, products, bought_users, bought_products, k=2, chunk_users=97).to_pandas()
    assert set(items.columns) == {"user_id", "explore_rank", "product_id", "similarity"}
    assert items.groupby("user_id").size().max() == 2 and items.user_id.nunique() == graph.n_users
    bought = set(zip(bought_users.tolist(), bought_products.tolist(), strict=True))
    assert not bought & set(zip(items.user_id.tolist(), items.product_id.tolist(), strict=True))
    wide = items.pivot(index="user_id", columns="explore_rank", values="similarity")
    assert (wide[1] >= wide[2]).all()
    user_community = graph.user_community[np.searchsorted(graph.user_ids, items.user_id.to_numpy())]
    product_community = graph.product_community[
        np.searchsorted(graph.product_ids, items.product_id.to_numpy())
    ]
    assert (user_community == product_community).mean() > 0.7


def test_explore_skips_a_user_who_bought_everything():
    users = EmbeddingTable.from_vectors(np.array([5, 6]), np.eye(2, dtype=np.float32))
    products = EmbeddingTable.from_vectors(np.array([1, 2, 3]), np.eye(3, 2, dtype=np.float32) + 0.1)
    items = explore_items(users, products, np.array([5, 5, 5, 6]), np.array([1, 2, 3, 2]), k=2).to_pandas()
    assert items.user_id.tolist() == [6, 6] and set(items.product_id) == {1, 3}


def test_similarity_feature_is_the_cosine_and_nan_when_unknown():
    rng = np.random.default_rng(0)
    user_vectors, product_vectors = rng.normal(size=(4, 8)), rng.normal(size=(3, 8))
    users = EmbeddingTable.from_vectors(np.array([40, 10, 30, 20]), user_vectors)
    products = EmbeddingTable.from_vectors(np.array([7, 8, 9]), product_vectors)
    values = similarity_feature(
        np.array([10, 20, 99, 30]), np.array([9, 7, 7, 5]), users, products, chunk_rows=2
    )
    expected = _cosine(user_vectors[[1, 3]], product_vectors[[2, 0]]).diagonal()
    np.testing.assert_allclose(values[:2], expected, rtol=1e-5)
    assert np.isnan(values[2:]).all() and values.dtype == np.float32


# --- persistence and encoding -----------------------------------------------------------------------


def test_state_dict_and_config_round_trip_without_pickled_objects(graph, trained, tmp_path):
    config = save_graphsage(
        trained.model, trained.params, trained.encoding, tmp_path, extra={"metrics": {"x": float("nan")}}
    )
    assert json.loads((tmp_path / CONFIG_FILE).read_text()) == json.loads(json.dumps(config))
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["metrics"]["x"] is None  # strict JSON
    state = torch.load(tmp_path / STATE_DICT_FILE, weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    # the archive's pickle holds only tensor rebuilds and plain containers, no classes of ours
    with zipfile.ZipFile(tmp_path / STATE_DICT_FILE) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    assert b"instarec" not in data and b"GraphSage" not in data
    model, params, encoding, _ = load_graphsage(tmp_path)
    assert params == trained.params and encoding == trained.encoding
    before = embed_graph(trained.model, graph, trained.encoding)
    after = embed_graph(model, graph, encoding)
    np.testing.assert_array_equal(before.users, after.users)
    np.testing.assert_array_equal(before.products, after.products)
    with pytest.raises(pickle.UnpicklingError):
        torch.save({"encoding": encoding}, tmp_path / "bad.pt")
        torch.load(tmp_path / "bad.pt", weights_only=True)


def test_encoding_puts_unknown_aisles_in_the_extra_slot_and_scales_like_training():
    encoding = FeatureEncoding.fit(
        np.array([3, 1, 3]),
        np.array([2, 2, 5]),
        np.array([[1.0, np.nan], [3.0, 2.0]]),
        ("a", "b"),
        np.array([[0.0], [4.0]]),
        ("c",),
    )
    assert encoding.aisle_ids == (1, 3) and encoding.n_aisles == 3
    assert encoding.aisle_index(np.array([3, 1, 99])).tolist() == [1, 0, 2]
    scaled = encoding.scale_users(np.array([[2.0, np.nan], [4.0, 2.0]]))
    np.testing.assert_allclose(scaled, [[0.0, 0.0], [2.0, 0.0]])
    assert FeatureEncoding.from_dict(json.loads(json.dumps(encoding.as_dict()))) == encoding


# --- the graph from the clean zone ------------------------------------------------------------------


def test_build_graph_reads_prior_lines_per_framing(tmp_path):
    """User 1: orders 10, 11 (lines known), 12 (latest, `test`: lines unknown). User 2: orders 20,
    21 (latest, `train`: lines known). Product 300 is in the catalog but nobody bought it."""
    conn = duckdb.connect()
    orders = tmp_path / "orders.parquet"
    lines = tmp_path / "lines.parquet"
    products = tmp_path / "products.parquet"
    conn.execute(
        f"""COPY (SELECT * FROM (VALUES
            (10, 1, 'prior', 1, NULL), (11, 1, 'prior', 2, 7), (12, 1, 'test', 3, 5),
            (20, 2, 'prior', 1, NULL), (21, 2, 'train', 2, 9)
        ) AS t(order_id, user_id, eval_set, order_number, days_since_prior_order)) TO '{orders}'"""
    )
    conn.execute(
        f"""COPY (SELECT * FROM (VALUES
            (10, 100, 1, 0), (10, 200, 2, 0), (11, 100, 1, 1),
            (20, 200, 1, 0), (21, 200, 1, 1), (21, 100, 2, 0)
        ) AS t(order_id, product_id, add_to_cart_order, reordered)) TO '{lines}'"""
    )
    conn.execute(
        f"""COPY (SELECT * FROM (VALUES
            (100, 5, 1, true), (200, 6, 2, true), (200, 5, 1, false), (300, 7, 2, true)
        ) AS t(product_id, aisle_id, department_id, is_current)) TO '{products}'"""
    )
    snapshot = CleanSnapshot(
        orders=[str(orders)], order_products=[str(lines)], products=str(products), aisles="", departments=""
    )

    def edges(graph):
        return {
            (int(graph.user_ids[u]), int(graph.product_ids[p])): float(w)
            for u, p, w in zip(graph.edge_user, graph.edge_product, graph.edge_weight, strict=True)
        }

    target = build_graph(conn, snapshot, "target")
    assert target.product_ids.tolist() == [100, 200, 300]
    assert target.product_aisle_ids.tolist() == [5, 6, 7]  # the current catalog row
    assert target.user_ids.tolist() == [1, 2]
    # user 1's latest order (12) has no lines; user 2's latest (21) is a label, never an edge
    assert edges(target) == {(1, 100): 2.0, (1, 200): 1.0, (2, 200): 1.0}
    assert target.user_orders.tolist() == [2.0, 1.0]
    assert target.user_days_between[0] == 7.0 and np.isnan(target.user_days_between[1])
    assert target.product_degree.tolist() == [1, 2, 0]

    serving = build_graph(conn, snapshot, "serving")
    assert edges(serving) == {(1, 100): 2.0, (1, 200): 1.0, (2, 200): 2.0, (2, 100): 1.0}
    assert serving.user_orders.tolist() == [2.0, 2.0]  # user 1's order 12 has no lines yet
    assert conn.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'gs_%'").fetchall()[0][0] == 0
