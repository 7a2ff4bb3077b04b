"""The Spark engine, Dagster side: every Spark job (the clean steps, the feature build) through one launcher.

A job takes one staging location (lake/staging.py): the asset writes the job's request there as
`_request.json`, run_staged_job starts the job on it through Dagster Pipes, and the asset reads back
the result the job wrote there last (`_result.json`) and publishes the staged tables as it does
DuckDB's. Locally the job is a local-mode PySpark subprocess (PipesSubprocessClient, a local
folder); in aws mode it is an EMR Serverless job run of the uploaded script (PipesEMRServerlessClient,
an s3:// prefix under INSTAREC_EMR_STAGING_URI, the lake's s3:// URIs as inputs), and the asset
publishes each staged table with an S3 copy. The asset reads the result file, not the Pipes
messages: on EMR those come from CloudWatch Logs, later and not always whole.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dagster import AssetExecutionContext, PipesSubprocessClient

from instarec_assets.features.full_build import (
    FeatureBuild,
    FeatureRequest,
    read_feature_result,
    write_feature_request,
)
from instarec_assets.lake.accounting import CleanResult
from instarec_assets.lake.clean_steps import LOCAL_SPARK_MASTER, CleanRequest, read_result, write_request
from instarec_assets.lake.emr_serverless import (
    FEATURES_JOB_SCRIPT,
    JOB_SCRIPT,
    EmrStagedOutputMissing,
    run_job,
    staged_job_arguments,
    start_job_run_request,
    step_job_run_name,
)
from instarec_assets.lake.staging import StagedResultMissing
from instarec_assets.resources import EmrServerlessResource, LakeResource
from instarec_assets.settings import missing_java

JOB_RUN_ID = "AWS EMR Serverless Job Run ID"  # the metadata key PipesEMRServerlessClient sets
# In a local job's staging folder: the JVM's console, forwarded to the run's log when the job ends.
JVM_LOG_FILE = "_spark_console.log"

T = TypeVar("T")


@dataclass(frozen=True)
class SparkJob:
    """A job script of instarec_assets/spark/: run as a module locally, uploaded as `script` for EMR."""

    module: str
    script: str


CLEAN_JOB = SparkJob("instarec_assets.spark.clean_job", JOB_SCRIPT)
FEATURES_JOB = SparkJob("instarec_assets.spark.features_job", FEATURES_JOB_SCRIPT)


def require_local_spark() -> None:
    """One line, not an ImportError or a Java gateway error from inside the job, when the spark extra
    or the Java runtime is missing (spark-class looks for JAVA_HOME's java, then java on PATH)."""
    if importlib.util.find_spec("pyspark") is None:
        raise RuntimeError(
            "the spark engine needs the spark extra: pip install 'instarec[spark]' (and Java 17)"
        )
    if (missing := missing_java()) is not None:
        raise RuntimeError(
            f"the spark engine needs a Java 17 runtime ({missing}): on Debian, apt-get install "
            "openjdk-17-jre-headless"
        )


def forward_jvm_log(context: AssetExecutionContext, log: Path, failed: bool) -> None:
    """The local JVM's console (Spark's log4j lines), kept off the terminal: into the run's log as a
    warning after a job that failed; after one that succeeded it holds only start-up notices."""
    if not log.exists():
        return
    text = log.read_text(errors="replace").strip()
    log.unlink()
    if failed and text:
        context.log.warning(f"local Spark JVM output:\n{text}")


def run_staged_job(
    context: AssetExecutionContext,
    job: SparkJob,
    staging: str,
    read_staged: Callable[[], T],
    subject: str,
    step: str,
    emr: EmrServerlessResource | None = None,
) -> T:
    """Run `job` on its staged request at `staging` and return what `read_staged` reads back: on local
    PySpark, or with `emr` as an EMR Serverless job run named after `step` (`clean-orders`). A failed
    job run, or a job that ended without staging its result, raises one line starting `subject`."""
    if emr is None:
        require_local_spark()
        jvm_log = Path(staging) / JVM_LOG_FILE
        failed = True
        try:
            # Spark's Python workers (the nfc_normalize and json_valid functions) run this interpreter.
            PipesSubprocessClient(env={"PYSPARK_PYTHON": sys.executable}).run(
                context=context,
                command=[
                    *(sys.executable, "-m", job.module, "--staging", staging),
                    *("--master", LOCAL_SPARK_MASTER, "--jvm-log", str(jvm_log)),
                ],
            )
            failed = False
        finally:
            forward_jvm_log(context, jvm_log, failed)
        try:
            return read_staged()
        except StagedResultMissing as missing:
            raise RuntimeError(f"{subject}: the local Spark job {job.script} ended but {missing}") from None
    settings = emr.settings()
    name = step_job_run_name(step, context.partition_key, context.run_id)
    client = emr.emr_client()
    invocation = run_job(
        lambda params: emr.pipes_client(client).run(context=context, start_job_run_params=params),
        client,
        start_job_run_request(settings, name, staged_job_arguments(staging), job.script),
        subject,
    )
    try:
        return read_staged()
    except StagedResultMissing as missing:
        job_run_id = invocation.metadata[JOB_RUN_ID].value
        raise EmrStagedOutputMissing(
            f"{subject}: EMR Serverless job run {job_run_id} ({name}) of application "
            f"{settings.application_id} ended SUCCESS but staged no output: {missing}"
        ) from None


def clean_on_spark(
    context: AssetExecutionContext,
    lake: LakeResource,
    request: CleanRequest,
    emr: EmrServerlessResource | None = None,
) -> CleanResult:
    """One clean step as the Spark clean job (instarec_assets/spark/clean_job.py): locally, or with
    `emr` on EMR Serverless (the request's staging is then an s3:// prefix)."""
    fs = lake.locations.filesystem
    write_request(fs, request)
    return run_staged_job(
        context,
        CLEAN_JOB,
        request.staging,
        lambda: read_result(fs, request.staging),
        subject=f"clean_{request.table}",
        step=f"clean-{request.table}",
        emr=emr,
    )


def features_on_spark(
    context: AssetExecutionContext,
    lake: LakeResource,
    request: FeatureRequest,
    emr: EmrServerlessResource | None = None,
) -> FeatureBuild:
    """The feature build or update as the Spark features job (instarec_assets/spark/features_job.py):
    locally, or with `emr` on EMR Serverless (the request's staging is then an s3:// prefix)."""
    fs = lake.locations.filesystem
    write_feature_request(fs, request)
    return run_staged_job(
        context,
        FEATURES_JOB,
        request.staging,
        lambda: read_feature_result(fs, request.staging),
        subject="curated_features_step",
        step="features",
        emr=emr,
    )
