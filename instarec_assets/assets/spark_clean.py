"""The clean steps' Spark engine, Dagster side: start the job through Pipes and read back its result.

Both launchers stage the step's CleanRequest, run instarec_assets/spark/clean_job.py with the staging
location as its one argument, and read the CleanResult the job left there; the clean asset then
publishes the staged tables as it does DuckDB's. Locally the job is a PySpark subprocess
(PipesSubprocessClient) staging into a local folder; in aws mode an EMR Serverless job run
(PipesEMRServerlessClient) staging under INSTAREC_EMR_STAGING_URI, reading the lake's s3:// URIs.
"""

from __future__ import annotations

import sys

from dagster import AssetExecutionContext, PipesSubprocessClient

from instarec_assets.assets.spark_jobs import require_spark_extra
from instarec_assets.lake.accounting import CleanResult
from instarec_assets.lake.clean_steps import (
    LOCAL_SPARK_MASTER,
    CleanRequest,
    StagedResultMissing,
    read_result,
    write_request,
)
from instarec_assets.lake.emr_serverless import (
    EmrStagedOutputMissing,
    clean_job_arguments,
    job_run_name,
    run_job,
    start_job_run_request,
)
from instarec_assets.resources import EmrServerlessResource, LakeResource

CLEAN_JOB_MODULE = "instarec_assets.spark.clean_job"
JOB_RUN_ID = "AWS EMR Serverless Job Run ID"  # the metadata key PipesEMRServerlessClient sets


def clean_on_local_spark(
    context: AssetExecutionContext, lake: LakeResource, request: CleanRequest
) -> CleanResult:
    """The step as a local-mode PySpark job, launched through PipesSubprocessClient."""
    require_spark_extra()
    fs = lake.locations.filesystem
    write_request(fs, request)
    # Spark's Python workers (the nfc_normalize and json_valid functions) run this interpreter.
    PipesSubprocessClient(env={"PYSPARK_PYTHON": sys.executable}).run(
        context=context,
        command=[
            sys.executable,
            "-m",
            CLEAN_JOB_MODULE,
            "--staging",
            request.staging,
            "--master",
            LOCAL_SPARK_MASTER,
        ],
    )
    try:
        return read_result(fs, request.staging)
    except StagedResultMissing as missing:
        raise RuntimeError(f"clean_{request.table}: the local Spark clean job ended but {missing}") from None


def clean_on_emr(
    context: AssetExecutionContext, lake: LakeResource, emr: EmrServerlessResource, request: CleanRequest
) -> CleanResult:
    """The step as an EMR Serverless job run: the request staged on S3, the run started and watched
    by PipesEMRServerlessClient; a failed run, or a successful one that staged nothing, ends the
    step with one line naming the job run and the table."""
    settings = emr.settings()
    fs = lake.locations.filesystem
    write_request(fs, request)
    name = job_run_name(request.table, context.partition_key, context.run_id)
    job_run = start_job_run_request(settings, name, clean_job_arguments(request.staging))
    client = emr.emr_client()
    subject = f"clean_{request.table}"
    invocation = run_job(
        lambda params: emr.pipes_client(client).run(context=context, start_job_run_params=params),
        client,
        job_run,
        subject,
    )
    try:
        return read_result(fs, request.staging)
    except StagedResultMissing as missing:
        job_run_id = invocation.metadata[JOB_RUN_ID].value
        raise EmrStagedOutputMissing(
            f"{subject}: EMR Serverless job run {job_run_id} ({name}) of application "
            f"{settings.application_id} ended SUCCESS but staged no output: {missing}"
        ) from None
