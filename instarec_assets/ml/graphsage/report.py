"""GraphSAGE end to end for the assets: train, write the artifacts and plots, embed both framings.

Dagster-free, like reorder_model.train_and_report, so the benchmark runs the same code.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure

from instarec_assets.ml.graphsage.artifacts import (
    CONFIG_FILE,
    TRAINING_NODES_FILE,
    TrainingNodes,
    embeddings_table,
    load_graphsage,
    load_training_nodes,
    save_graphsage,
    save_training_nodes,
)
from instarec_assets.ml.graphsage.config import FeatureEncoding, GraphSageParams
from instarec_assets.ml.graphsage.graph import BipartiteGraph
from instarec_assets.ml.graphsage.graph_state import STATE_FILES
from instarec_assets.ml.graphsage.inductive import GraphEmbeddings, embed_graph, seen_in
from instarec_assets.ml.graphsage.model import GraphSageModel
from instarec_assets.ml.graphsage.train import TrainedGraphSage, train_graphsage
from instarec_assets.ml.retrain import RetrainDecision, RetrainPolicy, decide, graph_drift

HEADLINE_METRICS = (
    "auc",
    "auc_degree_negatives",
    "cosine_positive_mean",
    "cosine_negative_mean",
    "r2_frequency",
    "final_loss",
    "seconds_per_epoch",
    "train_seconds",
    "total_seconds",
)
# Wall-clock numbers differ run to run: they go to TIMINGS_FILE, not into the config, so the state
# dict and the config of two runs on the same graph with the same settings are bit-identical.
TIMING_METRICS = ("train_seconds", "total_seconds", "seconds_per_epoch")
TIMING_HISTORY = ("epoch_seconds",)
TIMINGS_FILE = "graphsage_timings.json"


@dataclass
class GraphSageReport:
    model_dir: Path
    config: dict[str, Any]
    metrics: dict[str, float]
    trained: TrainedGraphSage
    plots: dict[str, Path] = field(default_factory=dict)


def train_and_report(
    graph: BipartiteGraph,
    workdir: Path,
    data_partition: str,
    params: GraphSageParams | None = None,
    device: str | None = None,
    code_version: str = "unknown",
    log=None,
    threads: int = 0,
    extra: dict[str, Any] | None = None,
) -> GraphSageReport:
    """Train on `graph` (the target framing), write state dict + config + plots into `workdir`.

    torch runs on `threads` threads (0 = the CPUs this process may use) with deterministic
    algorithms: the same graph, `params` (seed included), thread count, device and library versions
    give a bit-identical graphsage_state_dict.pt and graphsage_config.json (which records the seed,
    the thread count and the graph's sha256). Timings go to graphsage_timings.json, which is not.
    The training graph's nodes and degrees go to graphsage_training_nodes.parquet; `extra` is added
    to the config.
    """
    params = params or GraphSageParams()
    workdir.mkdir(parents=True, exist_ok=True)
    trained = train_graphsage(graph, params, device=device, log=log, threads=threads)
    metrics = dict(trained.metrics)
    metrics["final_loss"] = (
        trained.history["epoch_loss"][-1] if trained.history["epoch_loss"] else float("nan")
    )
    plots = {
        "loss_curve": plot_loss_curve(trained.history, workdir),
        "cosine_similarity": plot_cosine(trained.held_out, workdir),
        "purchase_frequency": plot_frequency(trained.held_out, metrics["r2_frequency"], workdir),
    }
    timings = {
        "metrics": {name: metrics[name] for name in TIMING_METRICS if name in metrics},
        "history": {name: trained.history[name] for name in TIMING_HISTORY if name in trained.history},
    }
    (workdir / TIMINGS_FILE).write_text(json.dumps(timings, indent=2) + "\n")
    save_training_nodes(TrainingNodes.of(graph), workdir)
    config = save_graphsage(
        trained.model,
        trained.params,
        trained.encoding,
        workdir,
        extra={
            "model_version": f"graphsage-{data_partition}-{code_version}",
            "data_partition": data_partition,
            "code_version": code_version,
            "graph": graph.describe(),
            "training": trained.training,
            "metrics": {name: value for name, value in metrics.items() if name not in TIMING_METRICS},
            "history": {
                name: values
                for name, values in trained.history.items()
                if name != "step_loss" and name not in TIMING_HISTORY
            },
            "timings_file": TIMINGS_FILE,
            "trained_on_batch": data_partition,
            **(extra or {}),
        },
    )
    return GraphSageReport(model_dir=workdir, config=config, metrics=metrics, trained=trained, plots=plots)


def embedding_tables(
    model: GraphSageModel,
    encoding: FeatureEncoding,
    graphs: dict[str, BipartiteGraph],
    training_graph: BipartiteGraph | TrainingNodes,
    device: str | None = "cpu",
    threads: int = 0,
) -> tuple[pa.Table, pa.Table, dict[str, dict[str, float]]]:
    """(user_embeddings, product_embeddings, stats per framing) for every framing's graph, embedded
    on `threads` threads (0 = the CPUs this process may use) with deterministic algorithms: the
    tables are bit-identical for the same model, graphs, thread count and device (stats hold timings).

    `training_edges` is a node's degree in the graph the model was trained on: 0 marks a node whose
    embedding is purely inductive (new since training, or never bought).
    """
    user_tables, product_tables, stats = [], [], {}
    for framing, graph in graphs.items():
        started = time.perf_counter()
        embedded: GraphEmbeddings = embed_graph(model, graph, encoding, device, threads=threads)
        user_table, product_table, counts = framing_tables(
            framing, graph, embedded.users, embedded.products, training_graph
        )
        user_tables.append(user_table)
        product_tables.append(product_table)
        stats[framing] = {
            **counts,
            "seconds": time.perf_counter() - started,
        }
    return pa.concat_tables(user_tables), pa.concat_tables(product_tables), stats


def framing_tables(
    framing: str,
    graph: BipartiteGraph,
    user_vectors: np.ndarray,
    product_vectors: np.ndarray,
    training_graph: BipartiteGraph | TrainingNodes,
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """One framing's user and product embedding tables (vectors aligned with the graph's ids) and
    its node counts; `training_edges` is each node's degree in the graph the model was trained on."""
    user_training = seen_in(graph.user_ids, training_graph.user_ids, training_graph.user_degree)
    product_training = seen_in(graph.product_ids, training_graph.product_ids, training_graph.product_degree)
    user_table = embeddings_table(
        framing,
        "user_id",
        graph.user_ids,
        user_vectors,
        {
            "edges": graph.user_degree.astype(np.int32),
            "training_edges": user_training.astype(np.int32),
        },
    )
    product_table = embeddings_table(
        framing,
        "product_id",
        graph.product_ids,
        product_vectors,
        {
            "aisle_id": graph.product_aisle_ids.astype(np.int32),
            "department_id": graph.product_department_ids.astype(np.int32),
            "edges": graph.product_degree.astype(np.int32),
            "training_edges": product_training.astype(np.int32),
        },
    )
    counts = {
        "users": graph.n_users,
        "products": graph.n_products,
        "edges": graph.n_edges,
        "inductive_users": int((user_training == 0).sum()),
        "inductive_products": int((product_training == 0).sum()),
    }
    return user_table, product_table, counts


def decide_graphsage(
    graph: BipartiteGraph,
    previous: str | Path | None,
    policy: RetrainPolicy,
    batch: str,
    batches_since,
    force: bool = False,
) -> RetrainDecision:
    """Retrain or keep the earlier model in `previous` for `batch`: the drift is the share of the
    current target graph's edges that the training graph did not have (from the edge counts its
    config records); `batches_since(trained_on_batch)` counts the batches since its fitting batch."""
    if previous is None:
        return decide(policy, None, batch, 0, float("nan"), force=force)
    config = json.loads(Path(previous, CONFIG_FILE).read_text())
    trained_on = str(config.get("trained_on_batch") or config["data_partition"])
    unusable = (
        ""
        if Path(previous, TRAINING_NODES_FILE).is_file()
        else f"its folder has no {TRAINING_NODES_FILE} (trained before the retrain policy)"
    )
    drift, detail = graph_drift(config.get("graph", {}), graph.describe())
    return decide(
        policy, trained_on, batch, batches_since(trained_on), drift, detail, force=force, unusable=unusable
    )


@dataclass
class KeptGraphSage:
    """An earlier model kept for this batch: its files re-published with the config noting reuse."""

    model_dir: Path
    model: GraphSageModel
    encoding: FeatureEncoding
    config: dict[str, Any]
    training_nodes: TrainingNodes


def keep_graphsage(
    previous: str | Path, workdir: Path, batch: str, decision: RetrainDecision
) -> KeptGraphSage:
    """Copy the earlier model's files into `workdir` and rewrite its config (last, the commit file)
    with the decision and `reused_in_batch`; model_version, metrics and data_partition stay those of
    the fitting batch. No weight changes: new users and products are embedded inductively."""
    workdir.mkdir(parents=True, exist_ok=True)
    for item in sorted(Path(previous).iterdir()):
        # the stored graph is rewritten for this batch (graph_state.py), not copied
        if item.is_file() and item.name != CONFIG_FILE and item.name not in STATE_FILES:
            shutil.copyfile(item, workdir / item.name)
    config = json.loads(Path(previous, CONFIG_FILE).read_text())
    config["trained_on_batch"] = str(config.get("trained_on_batch") or config["data_partition"])
    config["reused_in_batch"] = batch
    config["retrain"] = decision.as_dict()
    (workdir / CONFIG_FILE).write_text(json.dumps(_json_ready(config), indent=2, allow_nan=False) + "\n")
    model, _, encoding, config = load_graphsage(workdir)
    return KeptGraphSage(workdir, model, encoding, config, load_training_nodes(workdir))


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# --- plots (bare matplotlib Figures, Agg, no pyplot state) ---------------------------------------


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path


def plot_loss_curve(history: dict[str, list[float]], folder: Path) -> Path:
    """Training loss per step (and its moving average) with the per-epoch held-out AUC."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    steps = np.asarray(history.get("step_loss", []), dtype=np.float64)
    if steps.size:
        x = np.arange(1, steps.size + 1)
        axes.plot(x, steps, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
        window = max(1, steps.size // 50)
        if window > 1:
            smooth = np.convolve(steps, np.ones(window) / window, mode="valid")
            axes.plot(x[window - 1 :], smooth, color="tab:blue", label=f"moving average ({window} steps)")
    axes.set(xlabel="optimizer step", ylabel="loss (BCE + frequency MSE)", title="GraphSAGE training loss")
    axes.grid(alpha=0.3)
    auc = [value for value in history.get("epoch_auc", []) if np.isfinite(value)]
    if auc and steps.size:
        twin = axes.twinx()
        positions = np.linspace(steps.size / len(auc), steps.size, len(auc))
        twin.plot(positions, auc, color="tab:orange", marker="o", label="held-out AUC (sample)")
        twin.set(ylabel="held-out AUC", ylim=(0.5, 1.0))
        twin.legend(loc="upper right")
    axes.legend(loc="upper left")
    return _save(figure, folder / "loss_curve.png")


def plot_cosine(held_out: dict[str, np.ndarray], folder: Path) -> Path:
    """Distributions of the cosine similarity of held-out positive and negative pairs."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    bins = np.linspace(-1, 1, 41)
    for name, color in (("positive_cosine", "tab:green"), ("negative_cosine", "tab:red")):
        values = held_out.get(name, np.empty(0))
        if values.size:
            axes.hist(
                values,
                bins=bins,
                alpha=0.5,
                color=color,
                density=True,
                label=f"{name.split('_')[0]} pairs (mean {values.mean():.3f})",
            )
    axes.set(xlabel="cosine similarity", ylabel="density", title="Held-out pairs: embedding similarity")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, folder / "cosine_similarity.png")


def plot_frequency(held_out: dict[str, np.ndarray], r2: float, folder: Path, points: int = 5000) -> Path:
    """Predicted against actual purchase frequency on held-out edges (a sample of points)."""
    figure = Figure(figsize=(5.5, 5))
    axes = figure.add_subplot()
    actual = held_out.get("frequency_actual", np.empty(0))
    predicted = held_out.get("frequency_predicted", np.empty(0))
    if actual.size:
        pick = np.random.default_rng(0).permutation(actual.size)[:points]
        axes.scatter(actual[pick], predicted[pick], s=4, alpha=0.3)
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--")
    axes.set(
        xlabel="actual (times bought / orders)",
        ylabel="predicted",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Held-out purchase frequency (R² {r2:.3f})",
    )
    axes.grid(alpha=0.3)
    return _save(figure, folder / "purchase_frequency.png")
