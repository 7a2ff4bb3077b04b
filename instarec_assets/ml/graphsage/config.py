"""Hyperparameters and the node-feature encoding: plain dataclasses that round-trip through JSON.

The model is saved as a state dict plus `config.json` (no pickled objects); everything needed to
rebuild the network and to encode the features of a graph it has never seen (aisle and department
vocabularies, feature means and standard deviations) lives here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GraphSageParams:
    """Network and training settings.

    `fanouts[k]` is the number of neighbours sampled per node at hop k + 1 (hop 1 = the seeds'
    neighbours), one entry per layer. `mode` is `sampled` (mini-batches of edges with fixed-size
    neighbour sampling, memory bounded by the batch) or `full` (one full-graph step per epoch, for a
    GPU); `auto` picks `full` on CUDA and `sampled` otherwise. In sampled mode an epoch is
    `edges_per_epoch` training edges drawn without replacement (all of them when None).
    """

    hidden_dim: int = 64
    embedding_dim: int = 64
    num_layers: int = 2
    fanouts: tuple[int, ...] = (10, 5)
    dropout: float = 0.0
    mode: str = "auto"
    batch_size: int = 2048
    epochs: int = 4
    edges_per_epoch: int | None = 500_000
    full_epochs: int = 200
    learning_rate: float = 0.005
    weight_decay: float = 0.0
    # Negatives: a `uniform_negative_share` of them uniform over every product (never-bought ones
    # included), the rest in proportion to (product degree) ** negative_power (popular, harder).
    uniform_negative_share: float = 0.5
    negative_power: float = 0.75
    # Share of seed products that pose as new products in a batch (neighbourhood hidden, features of
    # a never-bought product), so the feature path learns to place a product with no purchases
    # (cold start) where its aisle and department belong.
    cold_start_rate: float = 0.2
    # Weight of the purchase-frequency regression loss next to the link-prediction loss.
    frequency_weight: float = 1.0
    held_out_share: float = 0.05
    max_held_out: int = 100_000
    # Held-out pairs scored after each epoch for the validation curve (sampled forward pass).
    epoch_eval_pairs: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.fanouts) != self.num_layers:
            raise ValueError(f"fanouts {self.fanouts} must have one entry per layer ({self.num_layers})")
        if self.mode not in ("auto", "sampled", "full"):
            raise ValueError(f"mode must be auto, sampled or full, not {self.mode!r}")
        if min(self.fanouts) < 1 or self.batch_size < 1 or self.num_layers < 1:
            raise ValueError("fanouts, batch_size and num_layers must be positive")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["fanouts"] = list(self.fanouts)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GraphSageParams:
        known = {field.name for field in fields(cls)}
        kept = {key: value for key, value in values.items() if key in known}
        if "fanouts" in kept:
            kept["fanouts"] = tuple(int(value) for value in kept["fanouts"])
        return cls(**kept)

    def resolved_mode(self, device: str) -> str:
        if self.mode != "auto":
            return self.mode
        return "full" if str(device).startswith("cuda") else "sampled"


@dataclass(frozen=True)
class FeatureEncoding:
    """How raw node features become model inputs; fitted on the training graph, reused inductively.

    Aisles and departments are one-hot over the vocabularies here; an id outside them (an aisle
    created after training) maps to the extra last slot. Numeric features are standardised with the
    training graph's mean and standard deviation; a missing value (NaN) becomes 0, the mean.
    """

    aisle_ids: tuple[int, ...]
    department_ids: tuple[int, ...]
    user_feature_names: tuple[str, ...]
    user_mean: tuple[float, ...]
    user_std: tuple[float, ...]
    product_feature_names: tuple[str, ...]
    product_mean: tuple[float, ...]
    product_std: tuple[float, ...]

    @property
    def n_aisles(self) -> int:
        """One-hot width for aisles, the unknown slot included."""
        return len(self.aisle_ids) + 1

    @property
    def n_departments(self) -> int:
        return len(self.department_ids) + 1

    @classmethod
    def fit(
        cls,
        aisle_ids: np.ndarray,
        department_ids: np.ndarray,
        user_raw: np.ndarray,
        user_feature_names: tuple[str, ...],
        product_raw: np.ndarray,
        product_feature_names: tuple[str, ...],
    ) -> FeatureEncoding:
        user_mean, user_std = _moments(user_raw)
        product_mean, product_std = _moments(product_raw)
        return cls(
            aisle_ids=tuple(int(value) for value in np.unique(aisle_ids)),
            department_ids=tuple(int(value) for value in np.unique(department_ids)),
            user_feature_names=tuple(user_feature_names),
            user_mean=user_mean,
            user_std=user_std,
            product_feature_names=tuple(product_feature_names),
            product_mean=product_mean,
            product_std=product_std,
        )

    def scale_users(self, raw: np.ndarray) -> np.ndarray:
        return _standardise(raw, self.user_mean, self.user_std)

    def scale_products(self, raw: np.ndarray) -> np.ndarray:
        return _standardise(raw, self.product_mean, self.product_std)

    def aisle_index(self, aisle_ids: np.ndarray) -> np.ndarray:
        return _vocabulary_index(aisle_ids, self.aisle_ids)

    def department_index(self, department_ids: np.ndarray) -> np.ndarray:
        return _vocabulary_index(department_ids, self.department_ids)

    def as_dict(self) -> dict[str, Any]:
        return {name: list(value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureEncoding:
        return cls(**{field.name: tuple(values[field.name]) for field in fields(cls)})


def _moments(raw: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    values = np.asarray(raw, dtype=np.float64)
    if values.shape[0] == 0:
        return (0.0,) * values.shape[1], (1.0,) * values.shape[1]
    with np.errstate(invalid="ignore"):
        mean = np.nan_to_num(np.nanmean(values, axis=0), nan=0.0)
        std = np.nan_to_num(np.nanstd(values, axis=0), nan=1.0)
    std = np.where(std > 1e-9, std, 1.0)
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


def _standardise(raw: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    scaled = (np.asarray(raw, dtype=np.float32) - np.float32(mean)) / np.float32(std)
    return np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def _vocabulary_index(values: np.ndarray, vocabulary: tuple[int, ...]) -> np.ndarray:
    known = np.asarray(vocabulary, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if known.size == 0:
        return np.zeros(values.shape, dtype=np.int64)
    position = np.clip(np.searchsorted(known, values), 0, known.size - 1)
    return np.where(known[position] == values, position, known.size).astype(np.int64)
