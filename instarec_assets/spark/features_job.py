"""The full feature build on Spark, as a Dagster Pipes job: `python -m instarec_assets.spark.features_job`.

Launched by curated_features_step when the engine is `spark` (PipesSubprocessClient locally). The
Pipes extras hold a FeatureRequest (features/full_build.py) and the Spark master; the job runs the
features' DuckDB SQL on Spark (lake/spark_connection.py) and reports each curated table with its rows.
"""

from __future__ import annotations

import time

from dagster_pipes import PipesContext, open_dagster_pipes

from instarec_assets.features.full_build import FeatureRequest, build_as_json, run_full_build
from instarec_assets.lake.spark_connection import SparkConnection, spark_session

# The asset whose reported metadata carries the whole build (the paths the step publishes).
RESULT_ASSET = "user_features"


def run(pipes: PipesContext) -> None:
    request = FeatureRequest.from_json(pipes.get_extra("request"))
    spark = spark_session(pipes.extras.get("master"), app_name="instarec-features")
    started = time.perf_counter()
    build = run_full_build(SparkConnection(spark), request)
    seconds = round(time.perf_counter() - started, 2)
    report = build_as_json(build)
    for name, staged in report.items():
        metadata = {"engine": "spark", "row_count": staged["rows"], "spark_seconds": seconds}
        if name == RESULT_ASSET:
            metadata["feature_build"] = {"raw_value": report, "type": "json"}
        pipes.report_asset_materialization(asset_key=name, metadata=metadata)


def main() -> None:
    with open_dagster_pipes() as pipes:
        run(pipes)


if __name__ == "__main__":
    main()
