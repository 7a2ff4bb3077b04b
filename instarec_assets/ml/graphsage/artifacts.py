"""Persisting the model (state dict + JSON config, no pickled objects) and the embeddings (parquet)."""

from __future__ import annotations

import json
import math
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
