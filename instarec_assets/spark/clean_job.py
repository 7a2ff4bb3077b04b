"""The clean steps on Spark, as a Dagster Pipes job: `clean_job.py --staging URI [--master local[2]]`.

Launched by the clean assets when the engine is `spark`: through PipesSubprocessClient locally
(`--master local[2]`, a local folder), through PipesEMRServerlessClient on EMR Serverless (no
master: the cluster's own; an `s3://<clean bucket>/emr-staging/<run>-clean_<table>` prefix). The
staging location holds the step's CleanRequest (`_request.json`, written by the asset: its inputs are
the lake's URIs, s3:// in aws mode); the job runs the step's DuckDB SQL on Spark
(lake/spark_connection.py), stages both tables there, writes the CleanResult as `_result.json` last,
and reports both assets with their row counts and the row accounting check through Pipes, plus a
summary line in the run's log. The asset records its materialisations and check from
`_result.json`, not from the Pipes messages: on EMR those come from CloudWatch Logs, later and not
always whole, and the result must be exact.

Runs on the local PySpark 4.x and on EMR's Spark 3.5 (emr-7.9.0): only APIs both have (see
lake/spark_connection.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from dagster_pipes import PipesContext, open_dagster_pipes

from instarec_assets.lake.accounting import ROW_ACCOUNTING_CHECK, CleanResult
from instarec_assets.lake.clean_steps import CleanRequest, result_as_json, run_clean_step
from instarec_assets.lake.spark_connection import SparkConnection, read_text, spark_session, write_text
from instarec_assets.lake.staging import REQUEST_FILE, RESULT_FILE, staging_file
from instarec_assets.spark.arguments import parse_staged_arguments


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_staged_arguments("clean_job.py", "One clean step on Spark.", argv)


def stage_clean(spark, staging: str) -> tuple[CleanRequest, CleanResult]:
    """Run the request staged at `staging` and stage its outputs and result there (no Pipes)."""
    request = CleanRequest.from_json(json.loads(read_text(spark, staging_file(staging, REQUEST_FILE))))
    if request.staging.rstrip("/") != staging.rstrip("/"):
        raise ValueError(f"{REQUEST_FILE} at {staging} stages to {request.staging}, not there")
    result = run_clean_step(SparkConnection(spark), request)
    write_text(spark, staging_file(staging, RESULT_FILE), json.dumps(result_as_json(result)))
    return request, result


def run(pipes: PipesContext, staging: str, master: str | None, jvm_log: Path | None = None) -> None:
    request, result = stage_clean(spark_session(master, jvm_log=jvm_log), staging)
    pipes.report_asset_materialization(
        asset_key=f"clean_{request.table}",
        metadata={
            "engine": "spark",
            "row_count": result.clean.row_count,
            **result.accounting.as_dict(),
            "staged": str(result.clean.path),
        },
    )
    pipes.report_asset_materialization(
        asset_key=f"quarantined_{request.table}",
        metadata={"engine": "spark", "row_count": result.quarantine.row_count},
    )
    pipes.report_asset_check(
        check_name=ROW_ACCOUNTING_CHECK,
        passed=result.accounting.balanced,
        asset_key=f"clean_{request.table}",
        metadata=result.accounting.as_dict(),
    )
    pipes.log.info(
        f"staged {result.clean.row_count:,} clean and {result.quarantine.row_count:,} quarantined rows of "
        f"{request.table}: {result.accounting.describe()}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    with open_dagster_pipes() as pipes:
        run(pipes, arguments.staging, arguments.master, arguments.jvm_log)


if __name__ == "__main__":
    main()
