"""Launching a Spark job script (instarec_assets/spark/) locally through Dagster Pipes."""

from __future__ import annotations

import importlib.util
import sys

from dagster import AssetExecutionContext, MaterializeResult, PipesSubprocessClient

from instarec_assets.lake.clean_steps import LOCAL_SPARK_MASTER


def require_spark_extra() -> None:
    """One line, not an ImportError from inside the job, when the spark extra is missing."""
    if importlib.util.find_spec("pyspark") is None:
        raise RuntimeError(
            "the spark engine needs the spark extra: pip install 'instarec[spark]' (and Java 17)"
        )


def run_spark_job(context: AssetExecutionContext, module: str, extras: dict) -> dict[str, MaterializeResult]:
    """Run `python -m module` on local PySpark through Pipes; the materialisations it reported, by asset."""
    require_spark_extra()
    # Spark's Python workers (the nfc_normalize function) run this interpreter, as the job does.
    invocation = PipesSubprocessClient(env={"PYSPARK_PYTHON": sys.executable}).run(
        context=context,
        command=[sys.executable, "-m", module],
        extras={**extras, "master": LOCAL_SPARK_MASTER},
    )
    return {
        reported.asset_key.to_user_string(): reported
        for reported in invocation.get_results()
        if isinstance(reported, MaterializeResult) and reported.asset_key is not None
    }
