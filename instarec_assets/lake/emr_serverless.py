"""The Spark jobs on EMR Serverless (the clean steps, the feature build): the StartJobRun request
and a failed run as one line.

The asset layer hands `start_job_run_request(...)` to dagster-aws's PipesEMRServerlessClient, which
adds the Pipes context (driver environment variables) and reads the job's messages from the
driver's stdout in CloudWatch Logs. The step itself (a clean step's CleanRequest, with the input
URIs and the forget list's salt; the feature build's FeatureRequest) is an object in the step's
staging prefix, named by the job's one argument, `--staging`: a request is too long for the job
run's parameters (a year of history is hundreds of URIs) and the salt must not show in them. The
spark stack (infra/stacks/spark.yaml) creates the application, the job role and the log group; the
deploy uploads the job scripts and their packed Python environment under INSTAREC_EMR_ARTIFACTS_URI
(infra/scripts/deploy.sh, step spark-job).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from instarec_assets.settings import Settings

# What the deploy uploads into the artifacts folder (infra/scripts/deploy.sh, step_spark_job): the
# clean job (JOB_SCRIPT) and the feature build's job, each an entry point of its own job runs.
JOB_SCRIPT_SOURCE = "instarec_assets/spark/clean_job.py"
JOB_SCRIPT = JOB_SCRIPT_SOURCE.rsplit("/", 1)[1]
FEATURES_JOB_SCRIPT_SOURCE = "instarec_assets/spark/features_job.py"
FEATURES_JOB_SCRIPT = FEATURES_JOB_SCRIPT_SOURCE.rsplit("/", 1)[1]
JOB_SCRIPT_SOURCES = (JOB_SCRIPT_SOURCE, FEATURES_JOB_SCRIPT_SOURCE)
ENVIRONMENT_ARCHIVE = "instarec-spark-env.tar.gz"
# spark.archives unpacks the environment into this folder of each driver's and executor's working dir.
ENVIRONMENT_ALIAS = "environment"
ENVIRONMENT_PYTHON = f"./{ENVIRONMENT_ALIAS}/bin/python"
# Local PySpark 4 runs ANSI SQL by default; EMR's Spark 3.5 does not: the same casts must fail alike.
SPARK_CONF = {"spark.sql.ansi.enabled": "true"}
DRIVER_LOG_TYPES = ["STDOUT", "STDERR"]
EXECUTION_TIMEOUT_MINUTES = 180
TERMINAL_FAILURES = ("FAILED", "CANCELLED", "CANCELLING")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

T = TypeVar("T")


class EmrConfigError(ValueError):
    """An INSTAREC_EMR_* setting the Spark engine needs in aws mode is missing or malformed."""


class EmrJobRunFailed(RuntimeError):
    """A job run ended in a failed state; the message is the one line a person reads."""


class EmrStagedOutputMissing(RuntimeError):
    """A job run ended SUCCESS without leaving its outputs in the staging prefix; one line."""


@dataclass(frozen=True)
class EmrServerlessSettings:
    """Where the Spark jobs run on AWS: the spark stack's outputs, as the run task receives them."""

    application_id: str
    job_role_arn: str
    artifacts_uri: str
    logs_uri: str
    log_group: str
    staging_uri: str
    execution_timeout_minutes: int = EXECUTION_TIMEOUT_MINUTES

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> EmrServerlessSettings:
        """The INSTAREC_EMR_* variables; a missing or non-s3:// one is named in the error."""
        settings = settings or Settings.from_env()
        return cls.from_values(
            settings.emr_application_id,
            settings.emr_job_role_arn,
            settings.emr_artifacts_uri,
            settings.emr_logs_uri,
            settings.emr_log_group,
            settings.emr_staging_uri,
        )

    @classmethod
    def from_values(
        cls,
        application_id: str,
        job_role_arn: str,
        artifacts_uri: str,
        logs_uri: str,
        log_group: str,
        staging_uri: str,
    ) -> EmrServerlessSettings:
        """The settings as the resource holds them; a missing or non-s3:// one is named by its
        variable."""
        values = {
            "INSTAREC_EMR_APPLICATION_ID": application_id.strip(),
            "INSTAREC_EMR_JOB_ROLE_ARN": job_role_arn.strip(),
            "INSTAREC_EMR_ARTIFACTS_URI": artifacts_uri.strip(),
            "INSTAREC_EMR_LOGS_URI": logs_uri.strip(),
            "INSTAREC_EMR_LOG_GROUP": log_group.strip(),
            "INSTAREC_EMR_STAGING_URI": staging_uri.strip(),
        }
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise EmrConfigError(
                f"the spark engine in aws mode needs {', '.join(missing)} (the spark stack's outputs; "
                "infra/scripts/deploy.sh ENV env prints them)"
            )
        for name in ("INSTAREC_EMR_ARTIFACTS_URI", "INSTAREC_EMR_LOGS_URI", "INSTAREC_EMR_STAGING_URI"):
            if not values[name].startswith("s3://"):
                raise EmrConfigError(f"{name} must be an s3:// URI, not {values[name]!r}")
        return cls(*(value.rstrip("/") for value in values.values()))

    @property
    def job_script_uri(self) -> str:
        return self.script_uri(JOB_SCRIPT)

    def script_uri(self, script: str) -> str:
        """An uploaded job script (JOB_SCRIPT, FEATURES_JOB_SCRIPT) in this deploy's artifacts."""
        return f"{self.artifacts_uri}/{script}"

    @property
    def environment_uri(self) -> str:
        return f"{self.artifacts_uri}/{ENVIRONMENT_ARCHIVE}"

    def step_staging_uri(self, run_id: str, table: str) -> str:
        """`<staging>/<run id>-clean_<table>`: one clean step's prefix."""
        return self.staging_prefix(run_id, f"clean_{table}")

    def staging_prefix(self, run_id: str, label: str) -> str:
        """`<staging>/<run id>-<label>`: one step's prefix, named as its local staging folder is
        (LakeResource.staging_dir: `clean_<table>`, `curated`)."""
        return f"{self.staging_uri}/{run_id}-{label}"


def staged_job_arguments(staging_uri: str) -> list[str]:
    """A job's command line on EMR: its staging prefix, and no master (the cluster's own)."""
    return ["--staging", staging_uri]


def spark_submit_parameters(settings: EmrServerlessSettings) -> str:
    """The packed environment as the driver's and executors' Python (EMR's documented venv recipe)."""
    conf = {
        "spark.archives": f"{settings.environment_uri}#{ENVIRONMENT_ALIAS}",
        "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": ENVIRONMENT_PYTHON,
        "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": ENVIRONMENT_PYTHON,
        "spark.executorEnv.PYSPARK_PYTHON": ENVIRONMENT_PYTHON,
        **SPARK_CONF,
    }
    return " ".join(f"--conf {key}={value}" for key, value in conf.items())


def monitoring_configuration(settings: EmrServerlessSettings) -> dict[str, Any]:
    """Logs to S3 (kept) and the driver's stdout/stderr to CloudWatch, where Pipes reads messages."""
    return {
        "s3MonitoringConfiguration": {"logUri": f"{settings.logs_uri}/"},
        "cloudWatchLoggingConfiguration": {
            "enabled": True,
            "logGroupName": settings.log_group,
            "logTypes": {"SPARK_DRIVER": list(DRIVER_LOG_TYPES)},
        },
    }


def job_run_name(table: str, partition_key: str, run_id: str) -> str:
    """`instarec-clean-<table>-<partition>-<run id prefix>`: a clean step's job run."""
    return step_job_run_name(f"clean-{table}", partition_key, run_id)


def step_job_run_name(step: str, partition_key: str, run_id: str) -> str:
    """`instarec-<step>-<partition>-<run id prefix>` (`clean-orders`, `features`): names the Dagster
    run and step in the EMR console. (boto3 fills in a fresh clientToken per call and keeps it across
    its own retries.)"""
    name = f"instarec-{step}-{partition_key}-{run_id[:8]}"
    return _NAME_UNSAFE.sub("-", name)[:256]


def start_job_run_request(
    settings: EmrServerlessSettings,
    name: str,
    arguments: list[str] | None = None,
    script: str = JOB_SCRIPT,
) -> dict[str, Any]:
    """StartJobRun parameters for the uploaded job `script` with its `arguments`
    (staged_job_arguments); the client adds the Pipes context to the driver's environment."""
    return {
        "applicationId": settings.application_id,
        "executionRoleArn": settings.job_role_arn,
        "name": name,
        "executionTimeoutMinutes": settings.execution_timeout_minutes,
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": settings.script_uri(script),
                "entryPointArguments": list(arguments or []),
                "sparkSubmitParameters": spark_submit_parameters(settings),
            }
        },
        "configurationOverrides": {"monitoringConfiguration": monitoring_configuration(settings)},
        "tags": {"project": "instarec"},
    }


def failed_job_run(client: Any, application_id: str, name: str, subject: str = "") -> str | None:
    """One line naming the job run called `name` and its state, if it ended failed; else None.
    `subject` (the asset or step, `clean_orders`) starts the line."""
    runs = []
    for page in client.get_paginator("list_job_runs").paginate(applicationId=application_id):
        runs.extend(run for run in page["jobRuns"] if run.get("name") == name)
    if not runs:
        return None
    run = max(runs, key=lambda r: r["createdAt"])
    if run["state"] not in TERMINAL_FAILURES:
        return None
    details = " ".join(str(run.get("stateDetails") or "").split())
    return (
        (f"{subject}: " if subject else "")
        + f"EMR Serverless job run {run['id']} ({name}) of application {application_id} ended "
        f"{run['state']}" + (f": {details}" if details else "")
    )


def run_job(
    submit: Callable[[dict[str, Any]], T], client: Any, request: dict[str, Any], subject: str = ""
) -> T:
    """`submit(request)` (PipesEMRServerlessClient.run bound to the asset's context); a job run that
    ends failed raises EmrJobRunFailed with one line, whatever the client raised."""
    try:
        return submit(request)
    except Exception:
        line = failed_job_run(client, request["applicationId"], request["name"], subject)
        if line is None:
            raise
        raise EmrJobRunFailed(line) from None
