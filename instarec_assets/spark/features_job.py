"""The feature build on Spark, as a Dagster Pipes job: `features_job.py --staging URI [--master local[2]]`.

Launched by curated_features_step when the engine is `spark`, as the clean job is (assets/spark_jobs.py):
through PipesSubprocessClient locally (`--master local[2]`, a local folder), through
PipesEMRServerlessClient on EMR Serverless (no master: the cluster's own; an
`s3://<clean bucket>/emr-staging/<run>-curated` prefix). The staging location holds the build's
FeatureRequest (`_request.json`, written by the asset: the clean zone's URIs, s3:// in aws mode, and
the previous batch's whole tables when it is an update); the job runs the features' DuckDB SQL
(the full build or the incremental update) on Spark (lake/spark_connection.py), stages every feature table and
the affected users there, writes their paths and rows as `_result.json` last, and reports each table
with its rows through Pipes, plus a summary line in the run's log. The asset records
`_result.json`, not the Pipes messages (as the clean job: they may arrive late on EMR), and
publishes from it.

Runs on the local PySpark 4.x and on EMR's Spark 3.5 (emr-7.9.0), as the clean job does.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from dagster_pipes import PipesContext, open_dagster_pipes

from instarec_assets.features.full_build import (
    STAGED_TABLES,
    UPDATE,
    FeatureRequest,
    build_as_json,
    run_feature_request,
)
from instarec_assets.features.incremental import first_delta
from instarec_assets.lake.spark_connection import SparkConnection, read_text, spark_session, write_text
from instarec_assets.lake.staging import REQUEST_FILE, RESULT_FILE, staging_file
from instarec_assets.spark.arguments import parse_staged_arguments


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_staged_arguments("features_job.py", "The feature build (full or an update) on Spark.", argv)


def stage_features(spark, staging: str) -> dict[str, dict]:
    """Run the request staged at `staging`, stage its tables and result there (no Pipes); the result."""
    request = FeatureRequest.from_json(json.loads(read_text(spark, staging_file(staging, REQUEST_FILE))))
    if request.staging.rstrip("/") != staging.rstrip("/"):
        raise ValueError(f"{REQUEST_FILE} at {staging} stages to {request.staging}, not there")
    conn = SparkConnection(spark)
    if request.previous is not None and (delta := first_delta(conn, request.previous)) is not None:
        raise ValueError(f"{delta} is a feature delta: the Spark engine updates whole tables only")
    report = build_as_json(run_feature_request(conn, request))
    write_text(spark, staging_file(staging, RESULT_FILE), json.dumps(report))
    return report


def run(pipes: PipesContext, staging: str, master: str | None, jvm_log: Path | None = None) -> None:
    spark = spark_session(master, app_name="instarec-features", jvm_log=jvm_log)
    started = time.perf_counter()
    report = stage_features(spark, staging)
    seconds = round(time.perf_counter() - started, 2)
    mode = "incremental" if UPDATE in report else "full"
    pipes.log.info(
        f"{mode} feature build on spark in {seconds} s: "
        + ", ".join(f"{name} {report[name]['rows']:,} rows" for name in STAGED_TABLES)
    )
    for name in STAGED_TABLES:
        pipes.report_asset_materialization(
            asset_key=name,
            metadata={
                "engine": "spark",
                "mode": mode,
                "row_count": report[name]["rows"],
                "spark_seconds": seconds,
            },
        )


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    with open_dagster_pipes() as pipes:
        run(pipes, arguments.staging, arguments.master, arguments.jvm_log)


if __name__ == "__main__":
    main()
