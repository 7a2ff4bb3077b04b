"""Persisting the model (state dict + JSON config, no pickled objects) and the embeddings (parquet)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from instarec_assets.lake.duck import StagedParquet
from instarec_assets.ml.graphsage.config import FeatureEncoding, GraphSageParams
from instarec_assets.ml.graphsage.model import GraphSageModel

STATE_DICT_FILE = "graphsage_state_dict.pt"
# The nodes of the graph the model was trained on and their degrees: a kept model (the retrain
# policy) marks which nodes of a later graph it embeds purely inductively (`training_edges` 0).
TRAINING_NODES_FILE = "graphsage_training_nodes.parquet"
CONFIG_FILE = "graphsage_config.json"
CONFIG_FORMAT = "instarec-graphsage/1"


def save_graphsage(
    model: GraphSageModel,
    params: GraphSageParams,
    encoding: FeatureEncoding,
    folder: str | Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the state dict (tensors only) and then the config; return the config written.

    The config is written last: a folder holding it is complete (the IO manager's commit file).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    torch.save(state, folder / STATE_DICT_FILE)
    config = _json_safe(
        {
            "format": CONFIG_FORMAT,
            "architecture": model.architecture,
            "params": params.as_dict(),
            "encoding": encoding.as_dict(),
            "state_dict_file": STATE_DICT_FILE,
            **(extra or {}),
        }
    )
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
    return config


def load_graphsage(folder: str | Path) -> tuple[GraphSageModel, GraphSageParams, FeatureEncoding, dict]:
    """Rebuild the network from the config and load the weights (`weights_only=True`: tensors only)."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE}: not a {CONFIG_FORMAT} config")
    model = GraphSageModel(config["architecture"])
    state = torch.load(folder / config["state_dict_file"], map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return (
        model,
        GraphSageParams.from_dict(config["params"]),
        FeatureEncoding.from_dict(config["encoding"]),
        config,
    )


@dataclass(frozen=True)
class TrainingNodes:
    """The training graph's node ids (sorted) and degrees: what embedding_tables reads of it."""

    user_ids: np.ndarray
    user_degree: np.ndarray
    product_ids: np.ndarray
    product_degree: np.ndarray

    @classmethod
    def of(cls, graph) -> TrainingNodes:
        return cls(graph.user_ids, graph.user_degree, graph.product_ids, graph.product_degree)


def save_training_nodes(nodes: TrainingNodes, folder: str | Path) -> Path:
    """One parquet file: node kind, id, degree (bit-identical for the same graph)."""
    kinds = ["user"] * len(nodes.user_ids) + ["product"] * len(nodes.product_ids)
    table = pa.table(
        {
            "node": pa.array(kinds, pa.string()),
            "id": pa.array(np.concatenate([nodes.user_ids, nodes.product_ids]).astype(np.int64)),
            "degree": pa.array(np.concatenate([nodes.user_degree, nodes.product_degree]).astype(np.int64)),
        }
    )
    path = Path(folder) / TRAINING_NODES_FILE
    pq.write_table(table, path, compression="zstd")
    return path


def load_training_nodes(folder: str | Path) -> TrainingNodes:
    table = pq.read_table(Path(folder) / TRAINING_NODES_FILE)
    kind = table.column("node").to_numpy(zero_copy_only=False)
    ids = table.column("id").to_numpy()
    degree = table.column("degree").to_numpy()
    users, products = kind == "user", kind == "product"
    return TrainingNodes(ids[users], degree[users], ids[products], degree[products])


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def embeddings_table(
    framing: str,
    id_column: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    columns: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """framing, <id>, the extra columns, then `embedding` as a fixed-size float32 list."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    data: dict[str, pa.Array] = {
        "framing": pa.array([framing] * len(ids), pa.string()),
        id_column: pa.array(np.asarray(ids).astype(np.int32)),
    }
    for name, values in (columns or {}).items():
        data[name] = pa.array(values)
    data["embedding"] = embedding
    return pa.table(data)


def write_embeddings(tables: list[pa.Table], path: Path) -> StagedParquet:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.concat_tables(tables)
    pq.write_table(table, path, compression="zstd")
    return StagedParquet(path, table.num_rows)
