"""The reorder model end to end: load a feature set, train, evaluate against baselines, write artifacts.

Dagster-free so the asset stays thin and the benchmark can run the same code. Training itself is
pluggable (`Trainer`): in-process XGBoost locally, or a SageMaker training job in aws mode.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from instarec_assets.compute import thread_count
from instarec_assets.features.targets import EARLIER_EVAL_SET, EARLIER_TARGET_MAX_HISTORY
from instarec_assets.lake.duck import user_id_table
from instarec_assets.lake.feature_delta import feature_source
from instarec_assets.ml.evaluation import (
    BasketEvaluation,
    compare_with_baselines,
    evaluate_baskets,
    model_order_f1,
)
from instarec_assets.ml.metrics import (
    ClassificationMetrics,
    classification_metrics,
    classification_metrics_held_out,
    classification_report_text,
    feature_importance,
    plot_feature_importance,
    plot_learning_curve,
    plot_threshold_analysis,
    threshold_table,
)
from instarec_assets.ml.none_probability import choose_none_probability, write_none_choice
from instarec_assets.ml.ranking import candidate_ranking_report, paired_difference
from instarec_assets.ml.retrain import (
    RetrainDecision,
    RetrainPolicy,
    decide,
    feature_profile,
    population_stability,
)
from instarec_assets.ml.training import (
    KEPT_EVALUATION_MAX_USERS,
    ReorderModelParams,
    TrainedModel,
    build_model_card,
    code_version,
    load_model,
    predict,
    sample_users,
    save_model,
    split_users,
    train_reorder_model,
    write_model_card,
)

MODEL_FILE = "model.json"
MODEL_CARD_FILE = "model_card.json"
# Columns the baselines read from the feature set itself: times bought, and bought in the last order.
HISTORY_COUNT_COLUMN = "up_orders"
# The ablation (a feature's worth) fits on at most this many users, sampled by the seed: with more
# users, both the with- and the without-feature model are refitted on that sample, so the comparison
# stays fair and costs about 2 x ABLATION_MAX_USERS users of fitting instead of a second full fit.
ABLATION_MAX_USERS = 10_000
# A feature earns its place in the served model when its per-order F1 gain on the ablation's
# held-out orders is above this many standard errors (paired by order): a tie leaves it out.
ABLATION_MIN_Z = 2.0
LAST_ORDER_COLUMN = "up_in_last_1"
# The card entry of a kept model saying which validation users it was evaluated on.
EVALUATION_SAMPLE = "evaluation_sample"


@dataclass(frozen=True)
class FeatureRows:
    """A feature set as arrays: the model matrix (float32) and the ids that say what each row is."""

    features: np.ndarray
    user_ids: np.ndarray
    product_ids: np.ndarray
    order_ids: np.ndarray
    eval_sets: np.ndarray
    labels: np.ndarray | None
    feature_names: tuple[str, ...]

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    @functools.cached_property  # once per row set: an object-array compare over every row
    def validates(self) -> np.ndarray:
        """Rows that may validate a model: all but the extra, earlier targets (they only train)."""
        return self.eval_sets != EARLIER_EVAL_SET

    def without_earlier_targets(self) -> FeatureRows:
        """These rows less the extra, earlier targets (`self` when there are none)."""
        keep = self.validates
        if keep.all():
            return self
        return _take_rows(self, keep)


# Computes a feature that is not stored in the feature set (the GraphSAGE similarity) from the row ids:
# (user_ids, product_ids, eval_sets) -> one float per row.
RowFeature = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def load_feature_rows(
    conn: duckdb.DuckDBPyConnection,
    uri: str,
    feature_names: Sequence[str],
    with_labels: bool,
    computed: Mapping[str, RowFeature] | None = None,
    users: np.ndarray | None = None,
) -> FeatureRows:
    """Read a staged or stored feature set (a delta resolved: lake/feature_delta.py); one float32 column at a time to keep one copy in memory.

    Rows come sorted by (user_id, product_id, eval_set, order_id), whatever order the file or a
    multi-threaded DuckDB scan gives them in, so the same feature set always trains the same model
    (XGBoost's row subsampling and quantile sketch depend on the row order). The sort is a permutation
    applied to each column as it is copied, not an ORDER BY over the wide rows: no second copy of
    the table. Features named in `computed` are not read from the file but computed from the rows'
    ids (after the sort, so they see the rows in their final order). With `users`, only those
    users' rows are read (a kept model's evaluation sample)."""
    computed = computed or {}
    stored = [name for name in feature_names if name not in computed]
    columns = "".join(f', "{name}"' for name in stored)
    label = ", label" if with_labels else ""
    query = f"SELECT user_id, product_id, order_id, eval_set{label}{columns} FROM {feature_source(conn, uri)}"
    if users is None:
        table = conn.sql(query).to_arrow_table()
    else:
        with user_id_table(conn, "_selected_users", users) as selected:
            table = conn.sql(f"{query} WHERE user_id IN (SELECT user_id FROM {selected})").to_arrow_table()
    raw_ids = {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in ("user_id", "product_id", "order_id")
    }
    eval_sets, eval_set_rank = _shared_strings(table.column("eval_set"))
    # np.lexsort sorts by the last key first; order_id (NULL -> NaN, last) only breaks ties.
    order = np.lexsort((raw_ids["order_id"], eval_set_rank, raw_ids["product_id"], raw_ids["user_id"]))
    del eval_set_rank
    ids = {name: values[order] for name, values in raw_ids.items()}
    del raw_ids
    eval_sets = eval_sets[order]
    labels = (
        table.column("label").to_numpy(zero_copy_only=False)[order].astype(np.int8) if with_labels else None
    )
    features = np.empty((table.num_rows, len(feature_names)), dtype=np.float32)
    for position, name in enumerate(feature_names):
        if name in computed:
            continue
        features[:, position] = table.column(name).to_numpy(zero_copy_only=False)[order]
        table = table.drop_columns([name])  # its buffers go as soon as they are copied
    for position, name in enumerate(feature_names):
        if name in computed:
            features[:, position] = computed[name](ids["user_id"], ids["product_id"], eval_sets)
    del table
    pa.default_memory_pool().release_unused()
    return FeatureRows(
        features=features,
        user_ids=ids["user_id"],
        product_ids=ids["product_id"],
        order_ids=ids["order_id"],
        eval_sets=eval_sets,
        labels=labels,
        feature_names=tuple(feature_names),
    )


def select_users(data: FeatureRows, users: np.ndarray) -> FeatureRows:
    """The rows of `users` (in their order), or `data` itself when it holds no other user's rows."""
    keep = np.isin(data.user_ids, users)
    if keep.all():
        return data
    return _take_rows(data, keep)


def _take_rows(data: FeatureRows, keep: np.ndarray) -> FeatureRows:
    return replace(
        data,
        features=data.features[keep],
        user_ids=data.user_ids[keep],
        product_ids=data.product_ids[keep],
        order_ids=data.order_ids[keep],
        eval_sets=data.eval_sets[keep],
        labels=None if data.labels is None else data.labels[keep],
    )


def _shared_strings(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A low-cardinality string column as an object array whose rows share one str per value (8 bytes
    a row, instead of a str object per row: half a GB for 8.5M rows), and each row's rank among the
    sorted distinct values (NULL last), a sort key that does not depend on the row order."""
    encoded = column.dictionary_encode().combine_chunks()
    dictionary = encoded.dictionary.to_pylist()
    values = np.array([*dictionary, None], dtype=object)
    indices = encoded.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False)
    rank = np.empty(len(dictionary) + 1, dtype=np.int32)
    rank[sorted(range(len(dictionary)), key=dictionary.__getitem__)] = np.arange(len(dictionary))
    rank[-1] = len(dictionary)
    return values[indices], rank[indices]


class Trainer(Protocol):
    """Where the model is fitted: must hold out users exactly as `train_reorder_model` does."""

    def train(
        self, data: FeatureRows, params: ReorderModelParams, seed: int, workdir: Path
    ) -> TrainedModel: ...


class InProcessTrainer:
    """XGBoost in this process (the local default)."""

    def train(self, data: FeatureRows, params: ReorderModelParams, seed: int, workdir: Path) -> TrainedModel:
        return train_reorder_model(
            data.features,
            data.labels,
            data.user_ids,
            data.feature_names,
            params,
            seed=seed,
            validates=data.validates,
        )


@dataclass
class ReorderModelReport:
    """Everything the xgboost_model asset records: artifacts on disk and the numbers behind them."""

    model_dir: Path
    card: dict
    metrics: ClassificationMetrics
    baskets: BasketEvaluation
    classification_report: str
    thresholds: pd.DataFrame
    importance: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)

    @property
    def beats_baselines(self) -> bool:
        return compare_with_baselines(self.baskets).passed


def _candidate_frame(
    data: FeatureRows, rows: np.ndarray, probabilities: np.ndarray | None = None
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": data.user_ids[rows],
            "order_id": data.order_ids[rows],
            "product_id": data.product_ids[rows],
            "label": data.labels[rows],
        }
    )
    if probabilities is not None:
        frame["probability"] = probabilities
    return frame


def _baseline_inputs(data: FeatureRows, rows: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """History counts and last-order products, read back from the candidate features themselves
    (`rows`: one framing's, so each (user, product) appears once)."""
    names = list(data.feature_names)
    counts = data.features[rows, names.index(HISTORY_COUNT_COLUMN)]
    in_last = data.features[rows, names.index(LAST_ORDER_COLUMN)] > 0
    user_ids, product_ids = data.user_ids[rows], data.product_ids[rows]
    history_counts = pd.DataFrame(
        {"user_id": user_ids, "product_id": product_ids, "n_orders_with_product": counts.astype(np.int32)}
    )
    last_order = pd.DataFrame({"user_id": user_ids[in_last], "product_id": product_ids[in_last]})
    return history_counts, last_order


def train_and_report(
    data: FeatureRows,
    workdir: Path,
    data_partition: str,
    trainer: Trainer | None = None,
    params: ReorderModelParams | None = None,
    seed: int = 0,
    ablate: str | None = None,
    threads: int = 0,
    card_extra: Mapping[str, Any] | None = None,
    keep_ablated: bool = False,
) -> ReorderModelReport:
    """Fit, score the held-out users, compare baskets with both baselines, write model + card + plots.

    With `ablate`, the feature must earn its place first: a model with and one without it are fitted
    on the same users (measure_ablation), and the served model keeps the feature only when it is
    measurably better (or `keep_ablated`); the card records both scores and the decision.

    XGBoost trains and predicts on `threads` threads; 0 takes `params.nthread`, and when that is 0
    too, every CPU this process may use (instarec_assets.compute.usable_cpus). The count is
    resolved once here and recorded in the card: model.json is bit-identical for the same rows,
    seed and thread count (see instarec_assets.ml.training). `card_extra` is added to the card
    (after the trainer's own `card_extra`).
    """
    params = params or ReorderModelParams()
    params = replace(params, nthread=thread_count(threads or params.nthread or 0))
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = trainer or InProcessTrainer()
    if ablate is not None and ablate not in data.feature_names:
        raise ValueError(f"cannot ablate {ablate!r}: not one of the model's features")
    ablation = None
    served_fit = None
    if ablate is not None:
        ablation = measure_ablation(data, ablate, trainer, params, seed, workdir)
        if not ablation.entry["kept"] and not keep_ablated:
            data = without_feature(data, ablate)
        else:
            served_fit = ablation.whole_fit  # the "with" fit of these very rows, when not a sample
    if served_fit is None:
        served_fit = (trainer.train(data, params, seed, workdir), dict(getattr(trainer, "card_extra", {})))
    model, trainer_card = served_fit
    validation_rows = model.validation_index
    validation_probabilities = predict(model.booster, data.features[validation_rows], threads=params.nthread)
    validation_labels = data.labels[validation_rows]
    metrics = classification_metrics_held_out(
        validation_labels, validation_probabilities, data.user_ids[validation_rows], seed
    )
    thresholds = threshold_table(validation_labels, validation_probabilities)
    importance = feature_importance(model.booster, data.feature_names)

    # The baselines and the report read each user's target framing only (not the earlier targets).
    target_rows = np.flatnonzero(data.validates)
    train_rows = np.setdiff1d(target_rows, validation_rows, assume_unique=True)
    history_counts, last_order = _baseline_inputs(data, target_rows)
    baskets = evaluate_baskets(
        _candidate_frame(data, validation_rows, validation_probabilities),
        _candidate_frame(data, train_rows),
        history_counts,
        last_order,
    )
    none_choice = choose_none_probability(
        _candidate_frame(data, validation_rows, validation_probabilities), seed
    )
    write_none_choice(workdir, none_choice)
    plots = {
        "threshold_analysis": plot_threshold_analysis(thresholds, workdir, best_threshold=metrics.threshold),
        "feature_importance": plot_feature_importance(importance, workdir),
    }
    if model.evals_result:
        plots["learning_curve"] = plot_learning_curve(
            model.evals_result, workdir, best_iteration=model.best_iteration
        )
    save_model(model.booster, workdir / MODEL_FILE)
    extra = {
        "model_version": f"xgboost-{data_partition}-{code_version()}",
        **trainer_card,
        **(card_extra or {}),
    }
    if ablation is not None:
        extra["ablation"] = ablation.entry | {"in_model": ablate in data.feature_names}
    ranking = _ranking_report(
        data,
        validation_rows,
        validation_probabilities,
        train_rows,
        trainer_card.get(EVALUATION_SAMPLE, {}).get("catalogue_products"),
    )
    extra.setdefault("intended_use", INTENDED_USE)
    extra.setdefault("limitations", list(LIMITATIONS))
    sample = trainer_card.get(EVALUATION_SAMPLE)
    extra["evaluation"] = {
        "users": "held-out validation users, their next (target) order"
        + (f": {sample['description']} (the model was kept, not refitted)" if sample else ""),
        "basket_f1": baskets.as_table().to_dict(orient="records"),
        "ranking": ranking.to_dict(orient="records"),
        "none_probability": {k: v for k, v in none_choice.as_dict().items() if k != "calibration"},
        "threshold": "chosen on half of the validation users; precision, recall and F1 at it on the other half",
    }
    card = build_model_card(
        model,
        metrics={**metrics.as_dict(), "basket_f1": baskets.as_dict()},
        data_partition=data_partition,
        code_version=code_version(),
        extra=extra,
    )
    write_model_card(workdir / MODEL_CARD_FILE, card)
    return ReorderModelReport(
        model_dir=workdir,
        card=card,
        metrics=metrics,
        baskets=baskets,
        classification_report=classification_report_text(
            validation_labels, validation_probabilities, metrics.threshold
        ),
        thresholds=thresholds,
        importance=importance,
        plots=plots,
    )


INTENDED_USE = (
    "Rank and choose the products a grocery customer is likely to reorder in their next order "
    "(the reorder part of their recommendations), from their own order history. Not for people "
    "without an order history, not for pricing, credit or any decision about a person."
)
LIMITATIONS = (
    "Only products the user bought before are candidates: it never proposes a new product (the "
    "explore items come from co-purchase neighbours, filled from GraphSAGE).",
    "Validated on held-out users of the same batch; a change in assortment or shopping habits needs "
    "the retrain policy's drift check and a refit.",
    "Probabilities are calibrated on the training batch; the F1-optimal basket size depends on them.",
    "Measured on synthetic data in this repository; its numbers say nothing about real customers.",
)


def _ranking_report(
    data: FeatureRows,
    validation_rows: np.ndarray,
    probabilities: np.ndarray,
    train_rows: np.ndarray,
    catalogue_products: int | None = None,
) -> pd.DataFrame:
    """Ranking metrics of the held-out users' candidates ordered by probability vs the baselines;
    coverage over `catalogue_products` (default: the distinct products of `data`)."""
    names = list(data.feature_names)
    counts = data.features[:, names.index(HISTORY_COUNT_COLUMN)]
    candidates = pd.DataFrame(
        {
            "user_id": data.user_ids[validation_rows],
            "product_id": data.product_ids[validation_rows],
            "label": data.labels[validation_rows],
            "probability": probabilities,
            "n_orders": counts[validation_rows],
            "in_last_order": data.features[validation_rows, names.index(LAST_ORDER_COLUMN)] > 0,
        }
    ).drop_duplicates(["user_id", "product_id"])
    training_history = pd.DataFrame(
        {
            "user_id": data.user_ids[train_rows],
            "product_id": data.product_ids[train_rows],
            "n_orders": counts[train_rows],
        }
    ).drop_duplicates(["user_id", "product_id"])
    catalogue = (
        catalogue_products if catalogue_products is not None else int(np.unique(data.product_ids).size)
    )
    return candidate_ranking_report(candidates, training_history, catalogue)


@dataclass(frozen=True)
class _AblatedFit:
    validation_index: np.ndarray
    probabilities: np.ndarray
    best_iteration: int


def _fit_without(
    data: FeatureRows, feature: str, trainer: Trainer, params: ReorderModelParams, seed: int, workdir: Path
) -> _AblatedFit:
    """Fit with `feature` set to one constant: a tree can never split on a column with a single value,
    so this is the model without it, at the cost of one saved column instead of a second feature
    matrix. (Not NaN: an all-missing column makes XGBoost's quantile matrix half again as large.)"""
    position = data.feature_names.index(feature)
    saved = data.features[:, position].copy()
    data.features[:, position] = 0.0
    try:
        model = trainer.train(data, params, seed, workdir)
        probabilities = predict(model.booster, data.features[model.validation_index], threads=params.nthread)
    finally:
        data.features[:, position] = saved
    return _AblatedFit(model.validation_index, probabilities, int(model.best_iteration))


def _user_sample(data: FeatureRows, max_users: int, seed: int) -> FeatureRows:
    """The rows of `max_users` users drawn by the seed among the users with a last-order target (the
    ones a fit can hold out), with all their rows (rows keep their order: same sample, same fit)."""
    return select_users(data, sample_users(data.user_ids[data.validates], max_users, seed))


def without_feature(data: FeatureRows, feature: str) -> FeatureRows:
    """`data` without one feature column. The last column is dropped as a view (no copy of a matrix
    that is 1.2 GB at full size); another column costs a copy."""
    position = data.feature_names.index(feature)
    names = data.feature_names[:position] + data.feature_names[position + 1 :]
    if position == len(data.feature_names) - 1:
        features = data.features[:, :position]
    else:
        features = np.delete(data.features, position, axis=1)
    return replace(data, features=features, feature_names=names)


@dataclass(frozen=True)
class Ablation:
    """measure_ablation's result: the card's `ablation` entry, and the with-feature fit with its
    trainer's card entries when it was fitted on every row (then it is the served model if the feature
    stays: the same rows, parameters and seed would fit it again); None when fitted on a sample."""

    entry: dict[str, Any]
    whole_fit: tuple[TrainedModel, dict[str, Any]] | None


def measure_ablation(
    data: FeatureRows,
    feature: str,
    trainer: Trainer,
    params: ReorderModelParams,
    seed: int,
    workdir: Path,
) -> Ablation:
    """With and without `feature`, both fitted and scored on the same users: every user up to
    ABLATION_MAX_USERS, else a seeded sample of that many (same held-out users within it). The
    feature is `kept` when the per-order F1 gain on the held-out orders is above ABLATION_MIN_Z
    standard errors: a feature that only ties stays out of the served model."""
    n_users = int(np.unique(data.user_ids[data.validates]).size)
    sample = _user_sample(data, ABLATION_MAX_USERS, seed) if n_users > ABLATION_MAX_USERS else data
    with_model = trainer.train(sample, params, seed, workdir.with_name(f"{workdir.name}-with-{feature}"))
    with_card = dict(getattr(trainer, "card_extra", {}))
    validation_rows = with_model.validation_index
    with_probabilities = predict(with_model.booster, sample.features[validation_rows], threads=params.nthread)
    without = _fit_without(
        sample, feature, trainer, params, seed, workdir.with_name(f"{workdir.name}-without-{feature}")
    )
    if not np.array_equal(without.validation_index, validation_rows):
        raise RuntimeError("the ablated model held out different users: the comparison would be unfair")
    f1 = {
        name: model_order_f1(_candidate_frame(sample, validation_rows, probabilities))[0]
        for name, probabilities in (("with", with_probabilities), ("without", without.probabilities))
    }
    gain = paired_difference(f1["with"], f1["without"])
    kept = bool(gain.n_users > 1 and gain.mean > ABLATION_MIN_Z * gain.standard_error)
    labels = sample.labels[validation_rows]
    users = (
        f"sample of {ABLATION_MAX_USERS} of {n_users} users (seed {seed}); both models fitted on it"
        if sample is not data
        else f"all {n_users} users; both models fitted on them"
    )
    entry = {
        "feature": feature,
        "users": users,
        "n_users": min(n_users, ABLATION_MAX_USERS),
        "validation_orders": gain.n_users,
        "validation_mean_f1_with": float(f1["with"].mean()),
        "validation_mean_f1_without": float(f1["without"].mean()),
        "f1_gain": gain.mean,
        "f1_gain_standard_error": gain.standard_error,
        "kept": kept,
        "decision": (
            f"kept: F1 gain {gain.mean:+.4f} +/- {gain.standard_error:.4f} is above {ABLATION_MIN_Z:g} standard errors"
            if kept
            else f"left out: F1 gain {gain.mean:+.4f} +/- {gain.standard_error:.4f} is not above "
            f"{ABLATION_MIN_Z:g} standard errors, so the served model does without {feature}"
        ),
        "validation_auc_with": classification_metrics(labels, with_probabilities).auc,
        "validation_auc_without": classification_metrics(labels, without.probabilities).auc,
        "best_iteration_with": int(with_model.best_iteration),
        "best_iteration_without": without.best_iteration,
    }
    return Ablation(entry, (with_model, with_card) if sample is data else None)


def read_model_card(model_dir: str | Path) -> dict:
    return json.loads(Path(model_dir, MODEL_CARD_FILE).read_text())


# Card entries a kept model recomputes on the current batch's data; every other entry of the
# fitting batch's card (model_version, parameters, the feature profile, SageMaker's artifact) stays.
RECOMPUTED_CARD_KEYS = (
    "metrics",
    "data_partition",
    "data_split",
    "ablation",
    "retrain",
    "created_at",
    EVALUATION_SAMPLE,
)


@dataclass(frozen=True)
class EvaluationSample:
    """The users a kept model is judged on: a seeded sample of the batch's validation users (its
    metrics, baskets and check) and as many of its training users (the baselines fitted on training
    histories, and with both, the drift), drawn from every user of the batch's feature set by the
    fitting split's fraction and seed, so only these users' rows need to be read."""

    validation_users: np.ndarray
    training_users: np.ndarray
    validation_total: int
    catalogue_products: int
    max_users: int
    seed: int

    @property
    def users(self) -> np.ndarray:
        return np.union1d(self.validation_users, self.training_users)


def kept_evaluation_sample(
    user_ids: np.ndarray,
    card: Mapping[str, Any],
    catalogue_products: int,
    max_users: int = KEPT_EVALUATION_MAX_USERS,
) -> EvaluationSample:
    """The EvaluationSample of a kept model (`card`: its model card) among `user_ids` (every user of
    the feature set's rows that may validate, see split_users; repeats are fine);
    `catalogue_products`: the feature set's distinct products."""
    split = card.get("data_split", {})
    fraction = float(split.get("validation_fraction", 0.1))
    seed = int(split.get("seed", 0))
    users = np.unique(np.asarray(user_ids))
    train_mask, validation_mask = split_users(users, fraction, seed)
    return EvaluationSample(
        validation_users=sample_users(users[validation_mask], max_users, seed),
        training_users=sample_users(users[train_mask], max_users, seed),
        validation_total=int(validation_mask.sum()),
        catalogue_products=int(catalogue_products),
        max_users=int(max_users),
        seed=seed,
    )


def kept_evaluation_sample_from_lake(
    conn: duckdb.DuckDBPyConnection,
    uri: str,
    card: Mapping[str, Any],
    max_users: int = KEPT_EVALUATION_MAX_USERS,
) -> EvaluationSample:
    """kept_evaluation_sample over a stored feature set, reading only its user and product ids."""
    source = feature_source(conn, uri)
    users = conn.execute(
        f"SELECT DISTINCT user_id FROM {source} WHERE eval_set <> '{EARLIER_EVAL_SET}'"
    ).fetchnumpy()["user_id"]
    (products,) = conn.execute(f"SELECT count(DISTINCT product_id) FROM {source}").fetchone()
    return kept_evaluation_sample(users, card, int(products), max_users)


class ReuseTrainer:
    """A Trainer that fits nothing: the model of an earlier batch, judged on this batch's rows.

    The rows are split by an EvaluationSample (the held-out users drawn exactly as
    train_reorder_model draws them, then at most `max_users` of them and of the training users by
    the same seed), so train_and_report computes the kept model's validation metrics, baskets and
    baseline check on a bounded sample of the current rows (train_or_keep gives it only the
    sample's users' rows); the card's `evaluation_sample` says how many.
    `card_extra` carries the fitting batch's card over."""

    def __init__(
        self,
        folder: str | Path,
        card: Mapping[str, Any] | None,
        sample: EvaluationSample,
    ) -> None:
        self.folder = Path(folder)
        self.sample = sample
        self.previous = dict(card) if card is not None else read_model_card(self.folder)
        trained_on = trained_on_batch(self.previous)
        self.card_extra: dict[str, Any] = {
            key: value for key, value in self.previous.items() if key not in RECOMPUTED_CARD_KEYS
        }
        self.card_extra["trained_on_batch"] = trained_on
        self.card_extra.setdefault("trained_at", self.previous.get("created_at"))
        if "ablation" in self.previous:
            self.card_extra["ablation"] = {**self.previous["ablation"], "from_training_batch": trained_on}

    def train(self, data: FeatureRows, params: ReorderModelParams, seed: int, workdir: Path) -> TrainedModel:
        sample = self.sample
        held_out = np.isin(data.user_ids, sample.validation_users)
        validation_mask = held_out & data.validates
        train_mask = ~held_out
        self.card_extra[EVALUATION_SAMPLE] = evaluation_sample(
            sample.validation_total, sample.validation_users.size, sample.max_users, sample.seed
        ) | {
            "training_users": int(sample.training_users.size),
            "catalogue_products": sample.catalogue_products,
        }
        validation_rows = np.flatnonzero(validation_mask)
        split = self.previous.get("data_split", {})
        return TrainedModel(
            booster=load_model(self.folder / MODEL_FILE, threads=params.nthread),
            params=params,
            feature_names=data.feature_names,
            best_iteration=int(self.previous["best_iteration"]),
            best_score=float(self.previous.get("best_validation_logloss", float("nan"))),
            validation_index=validation_rows,
            validation_user_ids=np.unique(data.user_ids[validation_rows]),
            n_train_rows=int(train_mask.sum()),
            n_train_users=int(sample.training_users.size),
            seed=sample.seed,
            validation_fraction=float(split.get("validation_fraction", 0.1)),
            data_sha256=self.previous.get("reproducibility", {}).get("training_data_sha256", ""),
        )


def evaluation_sample(validation_users: int, sampled: int, max_users: int, seed: int) -> dict[str, Any]:
    """What a kept model's card says of the users it was evaluated on (the ranking report reads it)."""
    return {
        "validation_users": int(validation_users),
        "evaluated_users": int(sampled),
        "max_users": int(max_users),
        "seed": int(seed),
        "description": (
            f"seeded sample of {sampled:,} of the batch's {validation_users:,} validation users (seed {seed})"
            if sampled < validation_users
            else f"all {validation_users:,} validation users of the batch"
        ),
    }


def trained_on_batch(card: Mapping[str, Any]) -> str:
    """The batch a model was fitted on (cards from before the retrain policy: its data_partition)."""
    return str(card.get("trained_on_batch") or card["data_partition"])


def decide_reorder_model(
    data: FeatureRows,
    previous: str | Path | None,
    policy: RetrainPolicy,
    batch: str,
    batches_since: Callable[[str], int],
    force: bool = False,
    sample: EvaluationSample | None = None,
) -> tuple[RetrainDecision, dict | None]:
    """(decision, the earlier model's card) for `batch`: the drift is the largest PSI of the current
    rows against the feature profile in the earlier card; `batches_since(trained_on_batch)` counts
    the batches after the fitting batch up to this one. `sample`: the users `data` holds, when it
    holds a kept model's evaluation sample rather than every user (the detail says so)."""
    if previous is None:
        return decide(policy, None, batch, 0, float("nan"), force=force), None
    card = read_model_card(previous)
    trained_on = trained_on_batch(card)
    unusable = ""
    if tuple(card.get("features", ())) != tuple(data.feature_names):
        unusable = "its features differ from this batch's"
    elif not Path(previous, MODEL_FILE).is_file():
        unusable = f"its folder has no {MODEL_FILE}"
    profile = card.get("feature_profile")
    drift, detail = (
        population_stability(data.features, data.feature_names, profile)
        if profile
        else (float("nan"), {"metric": "psi", "note": "the earlier card has no feature profile"})
    )
    if sample is not None:
        detail["current_users"] = (
            f"{sample.users.size:,} users sampled by seed {sample.seed} "
            f"({sample.validation_users.size:,} validation, {sample.training_users.size:,} training)"
        )
    decision = decide(
        policy, trained_on, batch, batches_since(trained_on), drift, detail, force=force, unusable=unusable
    )
    return decision, card


def training_targets(data: FeatureRows) -> dict[str, Any]:
    """What the model card says of the target orders the rows come from: each user's last order,
    and the extra, earlier targets (features/targets.py) that train but never validate."""
    earlier = ~data.validates
    return {
        "target_orders": int(np.unique(data.order_ids[~earlier]).size),
        "target_rows": int((~earlier).sum()),
        "earlier_orders": int(np.unique(data.order_ids[earlier]).size),
        "earlier_rows": int(earlier.sum()),
        "earlier_max_history_orders": EARLIER_TARGET_MAX_HISTORY,
        "description": (
            "each user's last order with its lines is the target; users with at most "
            f"{EARLIER_TARGET_MAX_HISTORY} orders before the order preceding it add that order as a second "
            "target, with the history before it (training rows only: validation, the threshold and the "
            "evaluation use the last orders alone)"
        ),
    }


def train_or_keep(
    data: FeatureRows,
    workdir: Path,
    data_partition: str,
    decision: RetrainDecision,
    previous: str | Path | None = None,
    previous_card: Mapping[str, Any] | None = None,
    trainer: Trainer | None = None,
    ablate: str | None = None,
    threads: int = 0,
    evaluation_max_users: int = KEPT_EVALUATION_MAX_USERS,
    sample: EvaluationSample | None = None,
    keep_ablated: bool = False,
) -> ReorderModelReport:
    """train_and_report with a fresh fit (the card gains the feature profile of these rows, the
    fitting batch and the decision), or, when the decision keeps the model, the earlier booster
    evaluated through the same report on at most `evaluation_max_users` of this batch's validation
    users (no refit, no ablation: it is carried over). A kept model is judged on `sample`'s users,
    drawn from `data` when not given; `data` may then hold only those users' rows (the same result
    as the whole feature set, at a fraction of the reading)."""
    if decision.retrain:
        return train_and_report(
            data,
            workdir,
            data_partition,
            trainer=trainer,
            ablate=ablate,
            threads=threads,
            keep_ablated=keep_ablated,
            card_extra={
                "trained_on_batch": data_partition,
                "feature_profile": feature_profile(data.features, data.feature_names),
                "training_targets": training_targets(data),
                "retrain": decision.as_dict(),
            },
        )
    if previous is None:
        raise ValueError("a decision to keep the model needs the earlier model's folder")
    card = dict(previous_card) if previous_card is not None else read_model_card(previous)
    if sample is None:
        sample = kept_evaluation_sample(
            data.user_ids[data.validates], card, int(np.unique(data.product_ids).size), evaluation_max_users
        )
    report = train_and_report(
        select_users(data, sample.users),
        workdir,
        data_partition,
        trainer=ReuseTrainer(previous, card, sample),
        threads=threads,
        card_extra={"retrain": decision.as_dict()},
    )
    # The kept model's file exactly as it was fitted (not a re-serialisation of the loaded booster).
    shutil.copyfile(Path(previous, MODEL_FILE), workdir / MODEL_FILE)
    return report
