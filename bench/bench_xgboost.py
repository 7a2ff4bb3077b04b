"""Time the XGBoost step (train_and_report with the ablation) on a stored training set.

Runs whatever `instarec_assets` is first on PYTHONPATH, so the same script measures two versions of
the code on the same feature set (before/after). The GraphSAGE similarity needs the embeddings, so
here the model uses the stored features only and the ablation drops `--ablate` (default `up_orders`):
the same amount of fitting as the pipeline's gs_similarity ablation. Prints one JSON line: wall
time, CPU time, peak RSS (ru_maxrss of this process), the load average before and after (another
engineer's work on the machine shows there), rows, users, rounds and the ablation entry.

    PYTHONPATH=. .venv/bin/python bench/bench_xgboost.py \
        --features HOME/lake/curated/.../training_set.parquet --work-dir /tmp/xgb
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import duckdb

from instarec_assets.features.columns import FEATURE_COLUMNS
from instarec_assets.ml.reorder_model import load_feature_rows, train_and_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="a training_set parquet file (or glob)")
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--ablate", default="up_orders")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    data = load_feature_rows(duckdb.connect(), args.features, FEATURE_COLUMNS, with_labels=True)
    loaded = time.perf_counter()
    report = train_and_report(data, args.work_dir, "2025-01-06", ablate=args.ablate, threads=args.threads)
    finished = time.perf_counter()
    result = {
        "rows": data.rows,
        "users": len(set(data.user_ids.tolist())),
        "load_s": round(loaded - started, 1),
        "train_and_report_s": round(finished - loaded, 1),
        "cpu_s": round(time.process_time() - cpu_started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "best_iteration": report.card["best_iteration"],
        "n_rounds_trained": report.card["n_rounds_trained"],
        "validation_auc": report.metrics.auc,
        "validation_mean_f1": report.baskets.model_f1,
        "ablation": report.card.get("ablation"),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
