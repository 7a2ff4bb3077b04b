"""Embeddings of a kept model for a new batch: re-embed what the batch changed, carry the rest over.

With the model kept (the retrain policy), the previous batch's embeddings came from the same weights.
A node whose own inputs did not change keeps its previous vector byte for byte; a node the batch
changed is embedded again with its full neighbourhood (`embed_nodes`: only the computation graph of
those nodes, not the whole graph). Changed: new users and products, nodes whose edge count moved
(they gained edges), products whose aisle or department moved, and every user with an order in the
batch (their history and features moved even when they only reordered).

Not exact: a carried node's neighbours' neighbours may have changed (a product's buyer count grows
with every batch). The difference is measured on a seeded sample of carried nodes, embedded afresh
and compared by cosine distance (`carried_cosine_distance_*` in the stats); a retrain re-embeds all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from instarec_assets.ml.graphsage.artifacts import TrainingNodes
from instarec_assets.ml.graphsage.config import FeatureEncoding
from instarec_assets.ml.graphsage.graph import BipartiteGraph
from instarec_assets.ml.graphsage.model import GraphSageModel
from instarec_assets.ml.graphsage.report import framing_tables
from instarec_assets.ml.graphsage.sampling import CSR
from instarec_assets.ml.graphsage.train import reproducible_torch

# Carried nodes per kind and framing embedded afresh to measure how far a carried vector drifted.
EXACTNESS_SAMPLE = 1_000


@dataclass(frozen=True)
class PreviousEmbeddings:
    """One framing of the previous batch's embeddings: ids sorted, with their edge counts (and, for
    products, aisle and department) as that batch's graph had them."""

    ids: np.ndarray  # int64, sorted
    edges: np.ndarray  # int64
    vectors: np.ndarray  # float32 (N, D)
    aisle_ids: np.ndarray | None = None
    department_ids: np.ndarray | None = None

    @classmethod
    def from_arrow(cls, table: pa.Table, id_column: str) -> PreviousEmbeddings:
        """From the rows of one framing of a stored user_ or product_embeddings table."""
        table = table.sort_by(id_column)
        column = table.column("embedding").combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        # a fixed-size list in the file; a plain list when read back through DuckDB
        dim = flat.size // len(column) if len(column) else 0

        def ints(name: str) -> np.ndarray | None:
            if name not in table.column_names:
                return None
            return table.column(name).to_numpy(zero_copy_only=False).astype(np.int64)

        return cls(
            ids=ints(id_column),
            edges=ints("edges"),
            vectors=flat.reshape(len(column), dim),
            aisle_ids=ints("aisle_id"),
            department_ids=ints("department_id"),
        )


def _lookup(ids: np.ndarray, previous: PreviousEmbeddings) -> tuple[np.ndarray, np.ndarray]:
    """(position of each id in `previous`, whether it is there)."""
    if previous.ids.size == 0:
        return np.zeros(ids.shape, dtype=np.int64), np.zeros(ids.shape, dtype=bool)
    position = np.clip(np.searchsorted(previous.ids, ids), 0, previous.ids.size - 1)
    return position, previous.ids[position] == ids


def changed_nodes(
    graph: BipartiteGraph,
    users: PreviousEmbeddings,
    products: PreviousEmbeddings,
    batch_user_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(changed user mask, changed product mask, previous position of each user, of each product)
    over the graph's nodes; see the module docstring for what counts as changed."""
    user_at, user_known = _lookup(graph.user_ids, users)
    product_at, product_known = _lookup(graph.product_ids, products)
    user_changed = (
        ~user_known | (users.edges[user_at] != graph.user_degree) if users.ids.size else ~user_known
    )
    user_changed |= np.isin(graph.user_ids, np.asarray(batch_user_ids, dtype=np.int64))
    product_changed = ~product_known
    if products.ids.size:
        product_changed |= products.edges[product_at] != graph.product_degree
        if products.aisle_ids is not None and products.department_ids is not None:
            product_changed |= products.aisle_ids[product_at] != graph.product_aisle_ids
            product_changed |= products.department_ids[product_at] != graph.product_department_ids
    return user_changed, product_changed, user_at, product_at


def _reached(adjacency: CSR, size: int) -> np.ndarray:
    """Mask of the `size` nodes that are neighbours of some row of `adjacency`."""
    reached = np.zeros(size, dtype=bool)
    reached[adjacency.nbr.numpy()] = True
    return reached


@torch.no_grad()
def embed_nodes(
    model: GraphSageModel,
    graph: BipartiteGraph,
    encoding: FeatureEncoding,
    users: np.ndarray,
    products: np.ndarray,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-neighbourhood embeddings of the users and products selected by the bool masks `users`
    and `products` (rows in mask order), computing each layer only on the nodes the next layer
    needs: the same function as the whole-graph embedding, on the CPU, deterministically."""
    encoder = model.encoder
    layers = encoder.num_layers
    # Both sides' adjacency once per graph; each layer takes the rows it needs (same rows, same
    # neighbour order as a CSR built from those rows' edges), once for finding the next layer's
    # nodes and for aggregating.
    user_adjacency = CSR.from_edges(graph.edge_user, graph.edge_product, graph.n_users)
    product_adjacency = CSR.from_edges(graph.edge_product, graph.edge_user, graph.n_products)
    need_users, need_products = [users.copy()], [products.copy()]
    user_rows, product_rows, to_user, to_product = [], [], [], []
    for _ in range(layers):
        user_rows.insert(0, np.flatnonzero(need_users[0]))
        product_rows.insert(0, np.flatnonzero(need_products[0]))
        to_user.insert(0, user_adjacency.rows(user_rows[0]))
        to_product.insert(0, product_adjacency.rows(product_rows[0]))
        need_users.insert(0, need_users[0] | _reached(to_product[0], graph.n_users))
        need_products.insert(0, need_products[0] | _reached(to_user[0], graph.n_products))
    del user_adjacency, product_adjacency
    was_training = model.training
    model.eval()
    try:
        with reproducible_torch(threads, "cpu"):
            model.cpu()
            features = graph.node_features(encoding)
            h_user = encoder.input_users(features)
            h_product = encoder.input_products(features)
            for layer in range(layers):
                # layer `layer` computes the nodes of need_*[layer + 1]: rows[layer]
                rows_u, rows_p = user_rows[layer], product_rows[layer]
                adjacency_u = to_user[layer].to_sparse(graph.n_products)
                adjacency_p = to_product[layer].to_sparse(graph.n_users)
                new_user = encoder.to_user[layer]((h_product, h_user[rows_u]), adjacency_u)
                new_product = encoder.to_product[layer]((h_user, h_product[rows_p]), adjacency_p)
                h_user = h_user.new_zeros((graph.n_users, new_user.shape[1]))
                h_product = h_product.new_zeros((graph.n_products, new_product.shape[1]))
                h_user[rows_u] = encoder._activate(new_user, layer)
                h_product[rows_p] = encoder._activate(new_product, layer)
    finally:
        model.train(was_training)
    return (
        h_user[torch.from_numpy(np.flatnonzero(users))].numpy().astype(np.float32, copy=False),
        h_product[torch.from_numpy(np.flatnonzero(products))].numpy().astype(np.float32, copy=False),
    )


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    return 1.0 - cosine


def _sample(mask: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A bool mask of at most `size` of the True positions of `mask`, drawn by `rng`."""
    positions = np.flatnonzero(mask)
    chosen = np.zeros(mask.shape, dtype=bool)
    if positions.size:
        chosen[rng.choice(positions, size=min(size, positions.size), replace=False)] = True
    return chosen


def carried_embedding_tables(
    model: GraphSageModel,
    encoding: FeatureEncoding,
    graphs: dict[str, BipartiteGraph],
    training_nodes: TrainingNodes,
    previous_users: dict[str, PreviousEmbeddings],
    previous_products: dict[str, PreviousEmbeddings],
    batch_user_ids: np.ndarray,
    threads: int = 0,
    seed: int = 0,
    exactness_sample: int = EXACTNESS_SAMPLE,
) -> tuple[pa.Table, pa.Table, dict[str, dict[str, float]]]:
    """Like report.embedding_tables (same columns, same row order), with the changed nodes embedded
    and the others carried from the previous batch's tables; stats add nodes embedded and carried
    and the carried vectors' cosine distance to a fresh embedding on a seeded sample."""
    user_tables, product_tables, stats = [], [], {}
    rng = np.random.default_rng(seed)
    for framing, graph in graphs.items():
        started = time.perf_counter()
        users_before, products_before = previous_users[framing], previous_products[framing]
        user_changed, product_changed, user_at, product_at = changed_nodes(
            graph, users_before, products_before, batch_user_ids
        )
        user_probe = _sample(~user_changed, exactness_sample, rng)
        product_probe = _sample(~product_changed, exactness_sample, rng)
        embedded_users, embedded_products = embed_nodes(
            model, graph, encoding, user_changed | user_probe, product_changed | product_probe, threads
        )
        dim = embedded_users.shape[1]
        user_vectors = np.zeros((graph.n_users, dim), dtype=np.float32)
        product_vectors = np.zeros((graph.n_products, dim), dtype=np.float32)
        user_vectors[~user_changed] = users_before.vectors[user_at[~user_changed]]
        product_vectors[~product_changed] = products_before.vectors[product_at[~product_changed]]
        fresh_users = user_changed | user_probe
        fresh_products = product_changed | product_probe
        # rows of the embedded arrays that belong to changed nodes / to the probes
        user_vectors[user_changed] = embedded_users[user_changed[fresh_users]]
        product_vectors[product_changed] = embedded_products[product_changed[fresh_products]]
        distance = np.concatenate(
            [
                _cosine_distance(user_vectors[user_probe], embedded_users[user_probe[fresh_users]]),
                _cosine_distance(
                    product_vectors[product_probe], embedded_products[product_probe[fresh_products]]
                ),
            ]
        )
        user_table, product_table, counts = framing_tables(
            framing, graph, user_vectors, product_vectors, training_nodes
        )
        user_tables.append(user_table)
        product_tables.append(product_table)
        stats[framing] = {
            **counts,
            "embedded_users": int(user_changed.sum()),
            "embedded_products": int(product_changed.sum()),
            "carried_users": int((~user_changed).sum()),
            "carried_products": int((~product_changed).sum()),
            "exactness_sample": int(distance.size),
            "carried_cosine_distance_max": float(distance.max()) if distance.size else 0.0,
            "carried_cosine_distance_mean": float(distance.mean()) if distance.size else 0.0,
            "seconds": time.perf_counter() - started,
        }
    return pa.concat_tables(user_tables), pa.concat_tables(product_tables), stats
