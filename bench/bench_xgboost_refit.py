"""Re-fit `xgboost_model` alone on a materialised batch (run config `force_retrain: true`) through
Dagster, as the pipeline runs it, and print the step time, the peak RSS and the similarity decision.

Use a bench home you can spare (the full-size increment bench's): the batch's model is replaced by
the new fit, and later assets of that batch are not re-run.

    .venv/bin/python bench/bench_xgboost_refit.py --home /tmp/bench-inc-full/incremental_home \
        --partition 2025-01-13
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--partition", required=True)
    args = parser.parse_args()
    os.environ["DAGSTER_HOME"] = str(Path(args.home) / "dagster")
    os.environ["INSTAREC_ENV"] = "local"
    from dagster import AssetKey, DagsterEventType, DagsterInstance

    from instarec_assets.definitions import build_definitions
    from instarec_assets.lake.locations import LakeLocations
    from instarec_assets.sensors import LANDING_JOB_NAME

    locations = LakeLocations.from_env(args.home)
    job = build_definitions(locations).resolve_job_def(LANDING_JOB_NAME)
    with DagsterInstance.get() as instance:
        started = time.perf_counter()
        result = job.execute_in_process(
            partition_key=args.partition,
            asset_selection=[AssetKey("xgboost_model")],
            instance=instance,
            raise_on_error=False,
            run_config={"ops": {"xgboost_model": {"config": {"force_retrain": True}}}},
        )
        wall = time.perf_counter() - started
    step = next(
        (
            e.event_specific_data.duration_ms / 1000
            for e in result.all_events
            if e.event_type == DagsterEventType.STEP_SUCCESS
        ),
        None,
    )
    if step is None:
        raise SystemExit(
            f"xgboost_model failed for {args.partition}: see the run's log in {args.home}/dagster"
        )
    card = json.loads(
        Path(locations.model_uri("xgboost_model", args.partition), "model_card.json").read_text()
    )
    print(
        json.dumps(
            {
                "wall_seconds": round(wall, 1),
                "step_seconds": round(step, 1),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "features": len(card["features"]),
                "validation_mean_f1": card["metrics"]["basket_f1"]["model_f1"],
                "auc": card["metrics"]["auc"],
                "ablation": card.get("ablation"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
