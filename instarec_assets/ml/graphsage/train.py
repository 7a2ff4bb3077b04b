"""Link-prediction training with negative sampling, held-out edges and the seed system's metrics.

- A share of the distinct edges (at most `max_held_out`) is held out: removed from message passing
  and from the positives, scored at the end.
- Sampled mode (CPU): each step takes `batch_size` training edges (u, p), one negative product per
  edge (half uniform, half in proportion to degree ** negative_power; true edges redrawn), samples
  the seeds' computation graph without the batch's own edges, makes a random `cold_start_rate`
  share of the seed products pose as new products (no neighbours, never-bought features), and
  minimises binary cross-entropy on the dot-product
  logits plus `frequency_weight` x the squared error of the predicted purchase frequency.
- Full mode (GPU): one full-graph step per epoch over every training edge and as many negatives.
- Metrics on the held-out edges, with full-neighbourhood embeddings of the training graph: AUC
  against uniformly drawn negatives (`auc`) and against degree-weighted ones (`auc_degree_negatives`),
  the mean cosine similarity of positive and negative pairs, R squared of the predicted purchase
  frequency (times bought / user's orders) against the actual one.

Reproducible: training and embedding run inside `reproducible_torch` (a fixed intra-op thread count,
`torch.use_deterministic_algorithms`), every random draw comes from generators seeded with
`params.seed` (numpy for the edge split, torch for the weights, batches, negatives and samples), and
the graph's node ids and edges are in a canonical order (graph.py), so the same graph, seed, thread
count, device and library versions give bit-identical weights and embeddings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from sklearn.metrics import r2_score, roc_auc_score
from torch import nn

from instarec_assets.compute import thread_count
from instarec_assets.ml.graphsage.config import FeatureEncoding, GraphSageParams
from instarec_assets.ml.graphsage.graph import BipartiteGraph, NodeFeatures
from instarec_assets.ml.graphsage.model import GraphSageModel
from instarec_assets.ml.graphsage.sampling import CSR, NeighborSampler

EVAL_BATCH = 8192


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def reproducible_torch(threads: int = 0, device: torch.device | str | None = None) -> Iterator[int]:
    """torch on `threads` intra-op threads (0 = the CPUs this process may use) with deterministic
    algorithms, for the duration of the block; the previous settings come back afterwards. Yields the
    thread count.

    On the CPU, with more than one thread, the sparse aggregation's backward pass otherwise sums in
    an order that varies run to run. `warn_only`: an op with no deterministic implementation (some
    CUDA kernels) warns instead of failing the run. Inter-op threads are left alone: torch allows
    setting them once per process, before any parallel work, so they cannot be scoped (and training
    does not use them).
    """
    count = thread_count(threads)
    if device is not None and str(device).startswith("cuda"):
        # cuBLAS is deterministic only with a fixed workspace; read when its handle is created.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    warn_only_before = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(count)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield count
    finally:
        torch.use_deterministic_algorithms(deterministic_before, warn_only=warn_only_before)
        torch.set_num_threads(threads_before)


@dataclass
class GraphTensors:
    """A graph's adjacency (both sides) and encoded features on one device."""

    user_adj: CSR
    product_adj: CSR
    features: NodeFeatures
    n_users: int
    n_products: int

    @classmethod
    def build(
        cls, graph: BipartiteGraph, encoding: FeatureEncoding, device: torch.device | str = "cpu"
    ) -> GraphTensors:
        return cls(
            user_adj=CSR.from_edges(graph.edge_user, graph.edge_product, graph.n_users).to(device),
            product_adj=CSR.from_edges(graph.edge_product, graph.edge_user, graph.n_products).to(device),
            features=graph.node_features(encoding).to(device),
            n_users=graph.n_users,
            n_products=graph.n_products,
        )

    @cached_property
    def to_user_edge_index(self) -> torch.Tensor:
        """Messages product -> user as [2, E] (row 0 product, row 1 user), for full-batch training."""
        return self.user_adj.edge_index()

    @cached_property
    def to_product_edge_index(self) -> torch.Tensor:
        return self.product_adj.edge_index()

    def sampler(self, fanouts: tuple[int, ...]) -> NeighborSampler:
        return NeighborSampler(self.user_adj, self.product_adj, fanouts)

    @torch.no_grad()
    def embed(self, model: GraphSageModel) -> tuple[torch.Tensor, torch.Tensor]:
        """Every node's embedding over its whole neighbourhood.

        On the CPU a sparse CSR SpMM (no E x D tensor; deterministic for a thread count). On CUDA
        PyG's gather + scatter over the edge_index instead: cuSPARSE's SpMM sums in a varying order
        even under torch.use_deterministic_algorithms, without a warning (seen on an H200, torch
        2.11), while the scatter is deterministic there; it costs an E x D message tensor in GPU
        memory (13M edges x 64 floats: 3.3 GB)."""
        was_training = model.training
        model.eval()
        try:
            if self.user_adj.ptr.device.type == "cuda":
                return model.encoder.forward_full(
                    self.features, self.to_user_edge_index, self.to_product_edge_index
                )
            return model.encoder.forward_full(
                self.features,
                self.user_adj.to_sparse(self.n_products),
                self.product_adj.to_sparse(self.n_users),
            )
        finally:
            model.train(was_training)


class NegativeSampler:
    """One negative product per user: with probability `uniform_share` uniform over every product
    (so products nobody bought are negatives too), otherwise in proportion to degree ** power (hard,
    popular negatives). A draw that is a true edge is redrawn once."""

    def __init__(
        self,
        product_degree: np.ndarray,
        power: float,
        edge_keys_sorted: torch.Tensor,
        n_products: int,
        device: torch.device | str = "cpu",
        uniform_share: float = 0.0,
    ):
        by_degree = np.power(product_degree.astype(np.float64), power)
        by_degree[product_degree == 0] = 0.0
        if by_degree.sum() <= 0:
            by_degree, uniform_share = np.ones(n_products), 1.0
        weights = (1.0 - uniform_share) * by_degree / by_degree.sum() + uniform_share / n_products
        cumulative = np.cumsum(weights / weights.sum())
        cumulative[-1] = 1.0
        self.cumulative = torch.from_numpy(cumulative).to(device)
        self.edge_keys = edge_keys_sorted
        self.n_products = n_products

    def _draw(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        draw = torch.rand(n, generator=generator, dtype=torch.float64, device=self.cumulative.device)
        return torch.searchsorted(self.cumulative, draw, right=True).clamp_(max=self.n_products - 1)

    def is_edge(self, users: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
        if self.edge_keys.numel() == 0:
            return torch.zeros(users.shape[0], dtype=torch.bool, device=users.device)
        keys = users * self.n_products + products
        position = torch.searchsorted(self.edge_keys, keys).clamp_(max=self.edge_keys.numel() - 1)
        return self.edge_keys[position] == keys

    def sample(self, users: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        products = self._draw(users.shape[0], generator)
        clash = self.is_edge(users, products)
        if bool(clash.any()):
            products[clash] = self._draw(int(clash.sum()), generator)
        return products


@dataclass
class EdgeSplit:
    train: np.ndarray  # edge positions in the graph
    held_out: np.ndarray


def split_edges(graph: BipartiteGraph, params: GraphSageParams) -> EdgeSplit:
    rng = np.random.default_rng(params.seed)
    n_held = min(int(graph.n_edges * params.held_out_share), params.max_held_out)
    order = rng.permutation(graph.n_edges)
    return EdgeSplit(train=np.sort(order[n_held:]), held_out=np.sort(order[:n_held]))


@dataclass
class TrainedGraphSage:
    """The fitted network, how its inputs are encoded, and what training measured."""

    model: GraphSageModel
    params: GraphSageParams
    encoding: FeatureEncoding
    metrics: dict[str, float]
    history: dict[str, list[float]]
    held_out: dict[str, np.ndarray] = field(default_factory=dict)
    training: dict[str, object] = field(default_factory=dict)


def train_graphsage(
    graph: BipartiteGraph,
    params: GraphSageParams | None = None,
    device: str | None = None,
    encoding: FeatureEncoding | None = None,
    log=None,
    threads: int = 0,
) -> TrainedGraphSage:
    """Fit GraphSAGE for link prediction on `graph` (see the module docstring) with torch on
    `threads` threads (0 = the CPUs this process may use), deterministically."""
    params = params or GraphSageParams()
    torch_device = resolve_device(device)
    with reproducible_torch(threads, torch_device) as count:
        return _train(graph, params, torch_device, encoding, log, count)


def _train(graph, params, torch_device, encoding, log, threads) -> TrainedGraphSage:
    mode = params.resolved_mode(str(torch_device))
    torch.manual_seed(params.seed)
    generator = torch.Generator(device=torch_device).manual_seed(params.seed)
    started = time.perf_counter()

    encoding = encoding or graph.fit_encoding()
    split = split_edges(graph, params)
    train_graph = graph.subgraph_edges(split.train)
    tensors = GraphTensors.build(train_graph, encoding, torch_device)
    all_keys = torch.from_numpy(np.sort(graph.edge_keys())).to(torch_device)
    negatives = NegativeSampler(
        train_graph.product_degree,
        params.negative_power,
        all_keys,
        graph.n_products,
        torch_device,
        uniform_share=params.uniform_negative_share,
    )
    train_user = torch.from_numpy(train_graph.edge_user).to(torch_device)
    train_product = torch.from_numpy(train_graph.edge_product).to(torch_device)
    train_frequency = torch.from_numpy(train_graph.edge_frequency()).to(torch_device)
    held_user = torch.from_numpy(graph.edge_user[split.held_out]).to(torch_device)
    held_product = torch.from_numpy(graph.edge_product[split.held_out]).to(torch_device)

    model = GraphSageModel(GraphSageModel.architecture_for(params, encoding)).to(torch_device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    history: dict[str, list[float]] = {
        "step_loss": [],
        "epoch_loss": [],
        "epoch_auc": [],
        "epoch_seconds": [],  # the epoch's training steps, without the held-out evaluation
        "epoch_edges": [],
    }
    epoch_eval = _epoch_eval_pairs(held_user, held_product, params, negatives, generator)
    sampler = tensors.sampler(params.fanouts) if mode == "sampled" else None
    epochs = params.epochs if mode == "sampled" else params.full_epochs
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        model.train()
        if mode == "sampled":
            losses, edges = _sampled_epoch(
                model,
                optimizer,
                sampler,
                tensors,
                negatives,
                (train_user, train_product, train_frequency),
                params,
                generator,
            )
        else:
            losses, edges = _full_epoch(
                model,
                optimizer,
                tensors,
                negatives,
                (train_user, train_product, train_frequency),
                params,
                generator,
            )
        history["step_loss"].extend(losses)
        history["epoch_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        history["epoch_edges"].append(edges)
        history["epoch_seconds"].append(time.perf_counter() - epoch_start)  # training only
        if mode == "sampled" or epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 10) == 0:
            history["epoch_auc"].append(_quick_auc(model, tensors, sampler, epoch_eval, params))
        if log is not None:
            auc = history["epoch_auc"][-1] if history["epoch_auc"] else float("nan")
            log(
                f"epoch {epoch + 1}/{epochs}: loss {history['epoch_loss'][-1]:.4f}, "
                f"held-out AUC {auc:.4f}, {history['epoch_seconds'][-1]:.1f} s"
            )
    train_seconds = time.perf_counter() - started

    user_embedding, product_embedding = tensors.embed(model)
    metrics, held_out = _held_out_metrics(
        model, user_embedding, product_embedding, graph, split, negatives, params, generator
    )
    metrics["train_seconds"] = train_seconds
    metrics["total_seconds"] = time.perf_counter() - started
    metrics["seconds_per_epoch"] = (
        float(np.mean(history["epoch_seconds"])) if history["epoch_seconds"] else 0.0
    )
    return TrainedGraphSage(
        model=model.cpu().eval(),
        params=params,
        encoding=encoding,
        metrics=metrics,
        history=history,
        held_out=held_out,
        training={
            "device": str(torch_device),
            "mode": mode,
            "threads": threads,
            "deterministic_algorithms": True,
            "seed": params.seed,
            "graph_sha256": graph.fingerprint(),
            "train_edges": int(split.train.size),
            "held_out_edges": int(split.held_out.size),
            "epochs": epochs,
        },
    )


def _link_loss(
    model: GraphSageModel,
    user: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    frequency: torch.Tensor,
    params: GraphSageParams,
) -> torch.Tensor:
    decoder = model.decoder
    logits = torch.cat([decoder.logits(user, positive), decoder.logits(user, negative)])
    labels = torch.cat([torch.ones(user.shape[0]), torch.zeros(user.shape[0])]).to(logits.device)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    if params.frequency_weight:
        predicted = decoder.frequency(user, positive)
        loss = loss + params.frequency_weight * nn.functional.mse_loss(predicted, frequency)
    return loss


def _sampled_epoch(model, optimizer, sampler, tensors, negatives, edges, params, generator):
    train_user, train_product, train_frequency = edges
    n_train = train_user.shape[0]
    n_edges = n_train if params.edges_per_epoch is None else min(n_train, params.edges_per_epoch)
    order = torch.randperm(n_train, generator=generator, device=train_user.device)[:n_edges]
    losses: list[float] = []
    for start in range(0, n_edges, params.batch_size):
        batch = order[start : start + params.batch_size]
        users, positives = train_user[batch], train_product[batch]
        negative = negatives.sample(users, generator)
        seeds = torch.cat([positives, negative])
        hidden = None
        if params.cold_start_rate:
            candidates = torch.unique(seeds)
            draw = torch.rand(candidates.shape[0], generator=generator, device=candidates.device)
            hidden = candidates[draw < params.cold_start_rate]
        sub = sampler.sample(
            users, seeds, generator, exclude_pairs=(users, positives), hidden_products=hidden
        )
        h_user, h_product = model.encoder.forward_sampled(sub, tensors.features)
        n = users.shape[0]
        loss = _link_loss(
            model,
            h_user[sub.seed_users],
            h_product[sub.seed_products[:n]],
            h_product[sub.seed_products[n:]],
            train_frequency[batch],
            params,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, int(n_edges)


def _full_epoch(model, optimizer, tensors, negatives, edges, params, generator):
    train_user, train_product, train_frequency = edges
    to_user = tensors.to_user_edge_index
    to_product = tensors.to_product_edge_index
    hidden = None
    if params.cold_start_rate:
        hidden = (
            torch.rand(tensors.n_products, generator=generator, device=to_product.device)
            < params.cold_start_rate
        )
        to_product = to_product[:, ~hidden[to_product[1]]]
    h_user, h_product = model.encoder.forward_full(tensors.features, to_user, to_product, hidden)
    negative = negatives.sample(train_user, generator)
    loss = _link_loss(
        model,
        h_user[train_user],
        h_product[train_product],
        h_product[negative],
        train_frequency,
        params,
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return [float(loss.detach())], int(train_user.shape[0])


def _epoch_eval_pairs(held_user, held_product, params, negatives, generator):
    n = min(int(held_user.shape[0]), params.epoch_eval_pairs)
    if n == 0:
        return None
    pick = torch.randperm(held_user.shape[0], generator=generator, device=held_user.device)[:n]
    users = held_user[pick]
    uniform = NegativeSampler(
        np.ones(negatives.n_products), 0.0, negatives.edge_keys, negatives.n_products, users.device, 1.0
    )
    return users, held_product[pick], uniform.sample(users, generator)


@torch.no_grad()
def _quick_auc(model, tensors, sampler, pairs, params) -> float:
    """Held-out AUC on a subsample, from the sampled computation graph (cheap, per epoch)."""
    if pairs is None:
        return float("nan")
    users, positives, negative = pairs
    model.eval()
    scores_pos, scores_neg = [], []
    if sampler is None:
        h_user, h_product = tensors.embed(model)
        scores_pos.append(model.decoder.logits(h_user[users], h_product[positives]))
        scores_neg.append(model.decoder.logits(h_user[users], h_product[negative]))
    else:
        eval_generator = torch.Generator(device=users.device).manual_seed(params.seed + 1)
        for start in range(0, users.shape[0], EVAL_BATCH):
            u = users[start : start + EVAL_BATCH]
            p, q = positives[start : start + EVAL_BATCH], negative[start : start + EVAL_BATCH]
            sub = sampler.sample(u, torch.cat([p, q]), eval_generator)
            h_user, h_product = model.encoder.forward_sampled(sub, tensors.features)
            h_u = h_user[sub.seed_users]
            scores_pos.append(model.decoder.logits(h_u, h_product[sub.seed_products[: u.shape[0]]]))
            scores_neg.append(model.decoder.logits(h_u, h_product[sub.seed_products[u.shape[0] :]]))
    model.train()
    return _auc(torch.cat(scores_pos).cpu().numpy(), torch.cat(scores_neg).cpu().numpy())


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    labels = np.concatenate([np.ones(positive.size), np.zeros(negative.size)])
    return float(roc_auc_score(labels, np.concatenate([positive, negative])))


@torch.no_grad()
def _held_out_metrics(model, user_embedding, product_embedding, graph, split, negatives, params, generator):
    device = user_embedding.device
    held = split.held_out
    users = torch.from_numpy(graph.edge_user[held]).to(device)
    positives = torch.from_numpy(graph.edge_product[held]).to(device)
    uniform = NegativeSampler(
        np.ones(graph.n_products), 0.0, negatives.edge_keys, graph.n_products, device, 1.0
    ).sample(users, generator)
    by_degree = NegativeSampler(
        graph.product_degree, params.negative_power, negatives.edge_keys, graph.n_products, device, 0.0
    ).sample(users, generator)
    decoder = model.decoder
    h_u = user_embedding[users]

    def score(products: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        h_p = product_embedding[products]
        logits = decoder.logits(h_u, h_p).cpu().numpy()
        cosine = nn.functional.cosine_similarity(h_u, h_p, dim=-1).cpu().numpy()
        return logits, cosine

    positive_logits, positive_cosine = score(positives)
    uniform_logits, uniform_cosine = score(uniform)
    degree_logits, degree_cosine = score(by_degree)
    predicted = decoder.frequency(h_u, product_embedding[positives]).cpu().numpy()
    actual = graph.edge_frequency()[held]
    metrics = {
        "auc": _auc(positive_logits, uniform_logits),
        "auc_degree_negatives": _auc(positive_logits, degree_logits),
        "cosine_positive_mean": float(positive_cosine.mean()) if held.size else float("nan"),
        "cosine_negative_mean": float(uniform_cosine.mean()) if held.size else float("nan"),
        "cosine_degree_negative_mean": float(degree_cosine.mean()) if held.size else float("nan"),
        "r2_frequency": float(r2_score(actual, predicted)) if held.size > 1 else float("nan"),
        "held_out_edges": int(held.size),
    }
    return metrics, {
        "positive_cosine": positive_cosine,
        "negative_cosine": uniform_cosine,
        "frequency_actual": actual,
        "frequency_predicted": predicted,
    }
