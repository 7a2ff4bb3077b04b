"""Does a second target order per short history improve the baskets? Fit the reorder model on a
materialised batch's training set with and without its `train_earlier` rows and compare them on the
same held-out users' last orders, paired per order.

The split draws the held-out users among the users with a last-order target (training.split_users),
so both fits are validated on exactly the same orders; only the training rows differ. Features are
the curated ones (FEATURE_COLUMNS: the served model's at full size, where the GraphSAGE similarity is
left out). Prints JSON: per fit the rows, users, best iteration, seconds, validation AUC and mean
basket F1, then the paired F1 gain with its standard error, and the peak RSS.

    .venv/bin/python bench/bench_earlier_targets.py --home /tmp/bench-inc-full/incremental_home \
        --partition 2025-01-13
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import duckdb
import pandas as pd

from instarec_assets.features import FEATURE_COLUMNS
from instarec_assets.features.targets import EARLIER_TARGET_MAX_HISTORY
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.evaluation import model_order_f1
from instarec_assets.ml.metrics import classification_metrics
from instarec_assets.ml.ranking import paired_difference
from instarec_assets.ml.reorder_model import (
    FeatureRows,
    InProcessTrainer,
    load_feature_rows,
    training_targets,
)
from instarec_assets.ml.training import ReorderModelParams, predict


def fit_and_score(data: FeatureRows, params: ReorderModelParams, seed: int) -> tuple[dict, pd.Series]:
    """One fit; its summary and the per-order F1 of its held-out orders (indexed by order_id)."""
    started = time.perf_counter()
    model = InProcessTrainer().train(data, params, seed, workdir=Path("unused"))  # writes nothing
    seconds = time.perf_counter() - started
    rows = model.validation_index
    probabilities = predict(model.booster, data.features[rows], threads=params.nthread)
    frame = pd.DataFrame(
        {
            "user_id": data.user_ids[rows],
            "order_id": data.order_ids[rows],
            "product_id": data.product_ids[rows],
            "label": data.labels[rows],
            "probability": probabilities,
        }
    )
    f1, _ = model_order_f1(frame)  # indexed by order_id
    summary = {
        "training_rows": model.n_train_rows,
        "training_users": model.n_train_users,
        "validation_orders": int(f1.size),
        "best_iteration": model.best_iteration,
        "fit_seconds": round(seconds, 1),
        "validation_auc": classification_metrics(data.labels[rows], probabilities).auc,
        "validation_mean_f1": float(f1.mean()),
    }
    return summary, f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--partition", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    locations = LakeLocations.from_env(args.home)
    uri = locations.partition_uri("curated", "training_set", args.partition)
    with duckdb.connect() as conn:
        data = load_feature_rows(conn, uri, FEATURE_COLUMNS, with_labels=True)
    params = ReorderModelParams()
    results = {"training_targets": training_targets(data)}
    with_earlier, f1_with = fit_and_score(data, params, args.seed)
    last_only, f1_without = fit_and_score(data.without_earlier_targets(), params, args.seed)
    if not f1_with.sort_index().index.equals(f1_without.sort_index().index):
        raise SystemExit("the two fits were validated on different orders: the comparison is unpaired")
    gain = paired_difference(f1_with, f1_without)
    # The orders of the users the extra targets come from: a short history (the target framing's
    # history is one order longer than the earlier framing's).
    names = list(data.feature_names)
    last = data.validates
    history = (
        pd.Series(data.features[last, names.index("u_orders")], index=data.order_ids[last])
        .groupby(level=0)
        .first()
    )
    short = history.reindex(f1_with.index) <= EARLIER_TARGET_MAX_HISTORY + 1
    short_gain = paired_difference(f1_with[short.to_numpy()], f1_without)
    results |= {
        "short_history_orders": short_gain.n_users,
        "short_history_f1_gain": short_gain.mean,
        "short_history_f1_gain_standard_error": short_gain.standard_error,
        "with_earlier_targets": with_earlier,
        "last_orders_only": last_only,
        "f1_gain": gain.mean,
        "f1_gain_standard_error": gain.standard_error,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
