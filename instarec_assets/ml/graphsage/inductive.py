"""Embeddings for any graph, including nodes the model never saw: GraphSAGE is inductive.

The trained encoder is a function of a node's features and its neighbours' features, not a lookup
table, so running it on a newer graph (the next batch's products and users, a framing with more
orders) embeds every node in it: a new product with no purchases from its aisle, department and
(zero) popularity; a new user from their features and the few products they bought. The features
are encoded with the training graph's `FeatureEncoding`, so a new node is scaled exactly as the
training nodes were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instarec_assets.ml.graphsage.config import FeatureEncoding
from instarec_assets.ml.graphsage.graph import BipartiteGraph
from instarec_assets.ml.graphsage.model import GraphSageModel
from instarec_assets.ml.graphsage.train import GraphTensors, reproducible_torch, resolve_device


@dataclass
class GraphEmbeddings:
    """One embedding per user and per product of a graph (rows follow graph.user_ids / product_ids)."""

    user_ids: np.ndarray
    users: np.ndarray  # float32 (U, D)
    product_ids: np.ndarray
    products: np.ndarray  # float32 (P, D)
    user_degree: np.ndarray  # edges of each user in the embedded graph
    product_degree: np.ndarray


def embed_graph(
    model: GraphSageModel,
    graph: BipartiteGraph,
    encoding: FeatureEncoding,
    device: str | None = "cpu",
    threads: int = 0,
) -> GraphEmbeddings:
    """Full-neighbourhood embeddings of every node of `graph` (SpMM; memory O(nodes x dims)), on
    `threads` threads (0 = the CPUs this process may use), deterministically."""
    torch_device = resolve_device(device)
    with reproducible_torch(threads, torch_device):
        model = model.to(torch_device)
        tensors = GraphTensors.build(graph, encoding, torch_device)
        users, products = tensors.embed(model)
        model.cpu()
    return GraphEmbeddings(
        user_ids=graph.user_ids,
        users=users.cpu().numpy().astype(np.float32, copy=False),
        product_ids=graph.product_ids,
        products=products.cpu().numpy().astype(np.float32, copy=False),
        user_degree=graph.user_degree,
        product_degree=graph.product_degree,
    )


def seen_in(ids: np.ndarray, reference_ids: np.ndarray, reference_degree: np.ndarray) -> np.ndarray:
    """Edges each of `ids` had in a reference graph (0 for a node absent from it): 0 = cold start."""
    reference_ids = np.asarray(reference_ids, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if reference_ids.size == 0:
        return np.zeros(ids.shape, dtype=np.int64)
    position = np.clip(np.searchsorted(reference_ids, ids), 0, reference_ids.size - 1)
    return np.where(reference_ids[position] == ids, reference_degree[position], 0).astype(np.int64)
