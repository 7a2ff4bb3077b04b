"""The clean steps on Spark, as a Dagster Pipes job: `python -m instarec_assets.spark.clean_job`.

Launched by the clean assets when the engine is `spark` (PipesSubprocessClient locally). The Pipes
extras hold a CleanRequest (lake/clean_steps.py) and the Spark master; the job runs the step's
DuckDB SQL on Spark (lake/spark_connection.py) and reports both assets with their row counts.
"""

from __future__ import annotations

from dagster_pipes import PipesContext, open_dagster_pipes

from instarec_assets.lake.clean_steps import CleanRequest, result_as_json, run_clean_step
from instarec_assets.lake.spark_connection import SparkConnection, spark_session


def run(pipes: PipesContext) -> None:
    request = CleanRequest.from_json(pipes.get_extra("request"))
    spark = spark_session(pipes.extras.get("master"))
    result = run_clean_step(SparkConnection(spark), request)
    report = result_as_json(result)
    pipes.report_asset_materialization(
        asset_key=f"clean_{request.table}",
        metadata={
            "engine": "spark",
            "row_count": result.clean.row_count,
            **result.accounting.as_dict(),
            "clean_result": {"raw_value": report, "type": "json"},
        },
    )
    pipes.report_asset_materialization(
        asset_key=f"quarantined_{request.table}",
        metadata={"engine": "spark", "row_count": result.quarantine.row_count},
    )


def main() -> None:
    with open_dagster_pipes() as pipes:
        run(pipes)


if __name__ == "__main__":
    main()
