"""The clean job's submission to EMR Serverless, run through dagster-aws's PipesEMRServerlessClient
against a moto server over real HTTP.

moto's emr-serverless backend records StartJobRun and reports SUCCESS at once without running
anything, so the test plays the service's side when the job run starts (a botocore after-call
handler on the real client, which changes nothing in the call): it runs a stand-in driver with the
driver environment the request carries (the Pipes context and message params), and ships the
driver's stdout to CloudWatch Logs where EMR Serverless would put it and where the client's
PipesCloudWatchMessageReader reads the messages.

moto 5.2 has no GetDashboardForJobRun, which the client calls once a run is FAILED: there the client
raises a 404 ClientError where AWS would give its RuntimeError("EMR Serverless job failed"). Either
way run_job looks the run up and raises the one line this test reads.
"""

import contextlib
import copy
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from dagster import AssetExecutionContext, MaterializeResult, asset, materialize
from dagster_aws.pipes import PipesCloudWatchMessageReader, PipesEMRServerlessClient
from moto.backends import get_backend

from instarec_assets.lake.emr_serverless import (
    ENVIRONMENT_ARCHIVE,
    JOB_SCRIPT,
    EmrConfigError,
    EmrJobRunFailed,
    EmrServerlessSettings,
    job_run_name,
    run_job,
    start_job_run_request,
)
from instarec_assets.settings import Settings
from instarec_assets_tests.aws_fixtures import REGION

ACCOUNT = "123456789012"  # moto's account
LOG_GROUP = "/instarec/test/emr-serverless"
PARTITION = "2024-03-01"
DRIVER_ENV = re.compile(r"--conf spark\.emr-serverless\.driverEnv\.(\w+)=(\S+)")
# What the Spark clean job reports (instarec_assets/spark/clean_job.py), with counts from the extras.
STAND_IN_DRIVER = textwrap.dedent(
    """
    import sys
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        counts = pipes.get_extra("counts")
        table = pipes.get_extra("request")["table"]
        pipes.report_asset_materialization(
            asset_key=f"clean_{table}",
            metadata={"engine": "spark", "row_count": counts["clean"], "rows_in": counts["in"]},
        )
        pipes.log.info(f"cleaned {counts['clean']} of {counts['in']} rows")
    """
)


def _settings(**overrides: str) -> EmrServerlessSettings:
    values = {
        "INSTAREC_EMR_APPLICATION_ID": "00app",
        "INSTAREC_EMR_JOB_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/instarec-test-emr-job",
        "INSTAREC_EMR_ARTIFACTS_URI": "s3://instarec-test-artifacts/emr-serverless/jobs/abc123/",
        "INSTAREC_EMR_LOGS_URI": "s3://instarec-test-artifacts/emr-serverless/logs",
        "INSTAREC_EMR_LOG_GROUP": LOG_GROUP,
        "INSTAREC_EMR_STAGING_URI": "s3://instarec-test-clean/emr-staging",
        **overrides,
    }
    return EmrServerlessSettings.from_settings(Settings.from_env(values))


def test_request_runs_the_uploaded_script_in_the_packed_environment_and_logs_to_s3_and_cloudwatch() -> None:
    settings = _settings()
    request = start_job_run_request(settings, job_run_name("orders", PARTITION, "f00dcafe-0000"))
    artifacts = "s3://instarec-test-artifacts/emr-serverless/jobs/abc123"
    assert request["name"] == "instarec-clean-orders-2024-03-01-f00dcafe"
    assert request["applicationId"] == "00app"
    assert request["executionRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/instarec-test-emr-job"
    spark_submit = request["jobDriver"]["sparkSubmit"]
    assert spark_submit["entryPoint"] == f"{artifacts}/{JOB_SCRIPT}"
    assert spark_submit["entryPointArguments"] == []  # none given here; the clean step gives --staging
    conf = dict(re.findall(r"--conf (\S+?)=(\S+)", spark_submit["sparkSubmitParameters"]))
    assert conf == {
        "spark.archives": f"{artifacts}/{ENVIRONMENT_ARCHIVE}#environment",
        "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": "./environment/bin/python",
        "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": "./environment/bin/python",
        "spark.executorEnv.PYSPARK_PYTHON": "./environment/bin/python",
        "spark.sql.ansi.enabled": "true",
    }
    assert request["configurationOverrides"]["monitoringConfiguration"] == {
        "s3MonitoringConfiguration": {"logUri": "s3://instarec-test-artifacts/emr-serverless/logs/"},
        "cloudWatchLoggingConfiguration": {
            "enabled": True,
            "logGroupName": LOG_GROUP,
            "logTypes": {"SPARK_DRIVER": ["STDOUT", "STDERR"]},
        },
    }


def test_missing_or_non_s3_settings_are_named() -> None:
    with pytest.raises(EmrConfigError, match="INSTAREC_EMR_APPLICATION_ID, INSTAREC_EMR_JOB_ROLE_ARN"):
        _settings(INSTAREC_EMR_APPLICATION_ID="", INSTAREC_EMR_JOB_ROLE_ARN=" ")
    with pytest.raises(EmrConfigError, match="INSTAREC_EMR_STAGING_URI must be an s3:// URI, not '/tmp/x'"):
        _settings(INSTAREC_EMR_STAGING_URI="/tmp/x")


# ----------------------------------------------------------------------------- through Pipes and moto
class PlayedJobRuns:
    """The service's side of each StartJobRun: run the driver with the request's driver environment
    and put its stdout into the driver's CloudWatch stream; a failing driver fails the job run."""

    def __init__(self, emr, logs, tmp_path: Path, fail: bool = False) -> None:
        self.logs, self.fail = logs, fail
        self.requests: list[dict[str, Any]] = []
        self.job_run_ids: list[str] = []
        self.script = tmp_path / "driver.py"
        self.script.write_text(STAND_IN_DRIVER + ("\nsys.exit(3)\n" if fail else ""))
        emr.meta.events.register("provide-client-params.emr-serverless.StartJobRun", self._record)
        emr.meta.events.register("after-call.emr-serverless.StartJobRun", self._run_driver)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.requests.append(copy.deepcopy(params))

    def _run_driver(self, parsed: dict[str, Any], **_: Any) -> None:
        request, job_run_id = self.requests[-1], parsed["jobRunId"]
        self.job_run_ids.append(job_run_id)
        driver_env = dict(DRIVER_ENV.findall(request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]))
        proc = subprocess.run(
            [sys.executable, str(self.script)],
            env={"PATH": "/usr/bin:/bin", **driver_env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        stream = f"/applications/{request['applicationId']}/jobs/{job_run_id}/SPARK_DRIVER/stdout"
        self.logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        now = int(time.time() * 1000)
        events = [{"timestamp": now, "message": line} for line in proc.stdout.splitlines() if line]
        if events:
            self.logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)
        if proc.returncode != 0:
            job_run = get_backend("emr-serverless")[ACCOUNT][REGION].get_job_run(
                request["applicationId"], job_run_id
            )
            job_run.state = "FAILED"
            job_run.state_details = f"Job failed, ExitCode: {proc.returncode}.\nDriver exited."


@pytest.fixture
def emr_app(aws_env: str) -> tuple[Any, Any, EmrServerlessSettings]:
    emr = boto3.client("emr-serverless", endpoint_url=aws_env, region_name=REGION)
    logs = boto3.client("logs", endpoint_url=aws_env, region_name=REGION)
    app = emr.create_application(
        name=f"instarec-test-{time.time_ns()}",
        releaseLabel="emr-7.9.0",
        type="SPARK",  # the API answers "Spark", which the client requires
        autoStartConfiguration={"enabled": True},
        autoStopConfiguration={"enabled": True, "idleTimeoutMinutes": 15},
    )
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):  # the session's server
        logs.create_log_group(logGroupName=LOG_GROUP)
    return emr, logs, _settings(INSTAREC_EMR_APPLICATION_ID=app["applicationId"])


def _clean_orders_asset(emr, settings: EmrServerlessSettings, counts: dict[str, int]):
    @asset(name="clean_orders")
    def clean_orders(
        context: AssetExecutionContext, emr_pipes: PipesEMRServerlessClient
    ) -> MaterializeResult:
        request = start_job_run_request(settings, job_run_name("orders", PARTITION, context.run_id))
        invocation = run_job(
            lambda params: emr_pipes.run(
                context=context,
                start_job_run_params=copy.deepcopy(params),
                extras={"request": {"table": "orders"}, "counts": counts},
            ),
            emr,
            request,
        )
        return invocation.get_materialize_result()

    return clean_orders


def _pipes_client(emr, logs) -> PipesEMRServerlessClient:
    return PipesEMRServerlessClient(
        client=emr, message_reader=PipesCloudWatchMessageReader(client=logs), poll_interval=0.1
    )


def test_clean_job_run_reports_its_row_counts_through_cloudwatch(emr_app, tmp_path: Path) -> None:
    emr, logs, settings = emr_app
    played = PlayedJobRuns(emr, logs, tmp_path)
    result = materialize(
        [_clean_orders_asset(emr, settings, {"clean": 41, "in": 44})],
        resources={"emr_pipes": _pipes_client(emr, logs)},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("clean_orders")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["row_count"] == 41 and metadata["rows_in"] == 44 and metadata["engine"] == "spark"
    [job_run_id] = played.job_run_ids
    assert metadata["AWS EMR Serverless Job Run ID"] == job_run_id
    assert metadata["AWS EMR Serverless Application ID"] == settings.application_id

    # The job run was started with exactly our request, plus what Pipes adds: the driver environment
    # (context and message params) and Dagster's tags.
    [sent] = played.requests
    expected = start_job_run_request(settings, job_run_name("orders", PARTITION, result.run_id))
    ours = expected["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]
    sent_params = sent["jobDriver"]["sparkSubmit"].pop("sparkSubmitParameters")
    assert sent_params.startswith(ours + " ")
    assert {name for name, _ in DRIVER_ENV.findall(sent_params[len(ours) :])} == {
        "DAGSTER_PIPES_CONTEXT",
        "DAGSTER_PIPES_MESSAGES",
    }
    assert sent["tags"]["project"] == "instarec" and sent["tags"]["dagster/run-id"] == result.run_id
    sent.pop("tags"), expected.pop("tags")
    expected["jobDriver"]["sparkSubmit"].pop("sparkSubmitParameters")
    assert sent == expected
    # What moto recorded is what was sent.
    job_run = emr.get_job_run(applicationId=settings.application_id, jobRunId=job_run_id)["jobRun"]
    assert job_run["jobDriver"]["sparkSubmit"]["entryPoint"] == settings.job_script_uri
    assert job_run["executionRole"] == settings.job_role_arn


def test_failed_job_run_ends_the_step_with_one_line_naming_the_run_and_state(emr_app, tmp_path: Path) -> None:
    emr, logs, settings = emr_app
    played = PlayedJobRuns(emr, logs, tmp_path, fail=True)
    result = materialize(
        [_clean_orders_asset(emr, settings, {"clean": 1, "in": 1})],
        resources={"emr_pipes": _pipes_client(emr, logs)},
        raise_on_error=False,
    )
    assert not result.success
    [job_run_id] = played.job_run_ids
    [failure] = [event for event in result.all_events if event.is_step_failure]
    # Dagster wraps what the asset raised; under the wrapper is the one line, with nothing below it.
    error = failure.step_failure_data.error.cause
    name = job_run_name("orders", PARTITION, result.run_id)
    assert error.cls_name == EmrJobRunFailed.__name__
    assert error.message.strip() == (
        f"{EmrJobRunFailed.__module__}.{EmrJobRunFailed.__name__}: EMR Serverless job run {job_run_id} "
        f"({name}) of application {settings.application_id} ended FAILED: Job failed, ExitCode: 3. "
        "Driver exited."
    )
    assert error.cause is None and error.context is None
