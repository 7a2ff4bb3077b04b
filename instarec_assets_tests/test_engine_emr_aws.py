"""aws mode with engine=spark: each clean step, and the curated feature build, is an EMR Serverless
job run, submitted through dagster-aws's PipesEMRServerlessClient to a moto server over real HTTP,
and published from its S3 staging prefix into the clean (or curated) bucket.

moto records StartJobRun and reports the run SUCCESS without running anything, so the test plays
the service's side when a run starts (botocore handlers on the resource's real client, which change
nothing in the call): it reads the job run's `--staging` argument, runs a stand-in driver with the
driver environment the request carries (the Pipes context), and ships the driver's stdout to the
run's CloudWatch stream, where the client reads Pipes messages. The stand-in for the job run's entry
point (clean_job.py or features_job.py) does the job's work with DuckDB, not Spark: it reads the
staged request from moto S3, runs the same function (run_clean_step, run_full_build) and writes the
staged tables and `_result.json` under the staging prefix, as the Spark job does on EMR
(test_engine_spark_uris.py runs both jobs themselves on URIs). For the failure cases the played run
ends FAILED or CANCELLED, or SUCCESS having staged nothing.

Not shown here (it needs an AWS account): EMR running the uploaded script in the packed
environment, EMRFS reading the lake and writing the staging prefix under the job role, and the
driver's stdout reaching CloudWatch Logs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, Definitions
from dagster_pipes import PipesDefaultContextLoader, decode_param
from moto.backends import get_backend

from instarec_assets.assets.checks import clean_checks
from instarec_assets.assets.curated import FEATURE_SET_DESCRIPTIONS
from instarec_assets.definitions import build_resources, environment_assets, landing_jobs
from instarec_assets.features.full_build import FeatureRequest, run_full_build
from instarec_assets.lake.duck import attach_filesystem
from instarec_assets.lake.emr_serverless import (
    ENVIRONMENT_ARCHIVE,
    FEATURES_JOB_SCRIPT,
    JOB_SCRIPT,
    EmrServerlessSettings,
    job_run_name,
    step_job_run_name,
)
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.staging import REQUEST_FILE, RESULT_FILE
from instarec_assets.pipeline.runner import PipelineError, land_folder, materialize_partition
from instarec_assets.resources import EmrServerlessResource
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets_tests.aws_fixtures import REGION
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, TRAIN_LINES, write_batch

# Each job run costs ~10-25 s: the Pipes client reads CloudWatch Logs every 10 s.
pytestmark = [pytest.mark.aws, pytest.mark.slow]

ACCOUNT = "123456789012"  # moto's account
DAY = "2025-01-06"
LOG_GROUP = "/instarec/test/emr-serverless"
DRIVER_ENV = re.compile(r"--conf spark\.emr-serverless\.driverEnv\.(\w+)=(\S+)")
CLEAN_TABLES = ("aisles", "departments", "products", "orders", "order_products")
# Each job's stand-in: the shared opening (Pipes, the staging argument, the FAILED outcome), then the
# job's work done by DuckDB on the staged request (see the module docstring).
STAND_IN_OPENING = textwrap.dedent(
    """
    import json, os, sys, tempfile
    from dataclasses import replace
    from pathlib import Path

    import duckdb
    from dagster_pipes import open_dagster_pipes

    from instarec_assets.lake.duck import StagedParquet, attach_filesystem
    from instarec_assets.lake.locations import LakeLocations
    from instarec_assets.lake.staging import REQUEST_FILE, RESULT_FILE, StagingUri
    from instarec_assets.spark.JOB_MODULE import parse_arguments
    JOB_IMPORTS

    staging = parse_arguments(sys.argv[1:]).staging
    fs = LakeLocations.from_env().filesystem
    with open_dagster_pipes() as pipes:
        if os.environ["STAND_IN_OUTCOME"] == "FAILED":
            print("Traceback: the job failed", file=sys.stderr)
            sys.exit(3)
        if os.environ["STAND_IN_OUTCOME"] == "work":
    """
)


def stand_in_driver(job_module: str, job_imports: str, work: str) -> str:
    """A stand-in job script: the shared opening, then `work` (the body of the "work" outcome)."""
    opening = STAND_IN_OPENING.replace("JOB_MODULE", job_module).replace("JOB_IMPORTS", job_imports)
    return opening + textwrap.indent(textwrap.dedent(work), " " * 8)


STAND_IN_CLEAN_DRIVER = stand_in_driver(
    "clean_job",
    "from instarec_assets.lake.clean_steps import CleanRequest, result_as_json, run_clean_step",
    """
    request = CleanRequest.from_json(json.loads(fs.cat_file(f"{staging}/{REQUEST_FILE}")))
    with duckdb.connect() as conn:
        attach_filesystem(conn, fs)
        done = run_clean_step(conn, replace(request, staging=tempfile.mkdtemp()))
    tables = []
    for local in (done.clean, done.quarantine):
        fs.put_file(str(local.path), f"{staging}/{local.path.name}")
        tables.append(StagedParquet(StagingUri(f"{staging}/{local.path.name}"), local.row_count))
    staged = replace(done, clean=tables[0], quarantine=tables[1])
    fs.pipe_file(f"{staging}/{RESULT_FILE}", json.dumps(result_as_json(staged)).encode())
    pipes.log.info(f"staged {staged.clean.row_count} clean rows of {request.table}")
    """,
)
STAND_IN_FEATURES_DRIVER = stand_in_driver(
    "features_job",
    "from instarec_assets.features.full_build import FeatureRequest, build_as_json, run_full_build",
    """
    request = FeatureRequest.from_json(json.loads(fs.cat_file(f"{staging}/{REQUEST_FILE}")))
    with duckdb.connect() as conn:
        attach_filesystem(conn, fs)
        report = build_as_json(run_full_build(conn, replace(request, staging=tempfile.mkdtemp())))
    for item in report.values():
        target = f"{staging}/{Path(item['path']).name}"
        fs.put_file(item["path"], target)
        item["path"] = target
    fs.pipe_file(f"{staging}/{RESULT_FILE}", json.dumps(report).encode())
    pipes.log.info(f"staged {report['user_features']['rows']} user_features rows")
    """,
)
STAND_IN_DRIVERS = {JOB_SCRIPT: STAND_IN_CLEAN_DRIVER, FEATURES_JOB_SCRIPT: STAND_IN_FEATURES_DRIVER}


def assert_job_request(sent: dict, settings, script: str, staging: str, name: str, run_id: str) -> dict:
    """Check the StartJobRun request a step sent (application, role, name, entry point and
    arguments, the packed environment, ANSI SQL, the run in the Pipes context); the Pipes context."""
    assert sent["applicationId"] == settings.application_id
    assert sent["executionRoleArn"] == settings.job_role_arn
    assert sent["name"] == name
    submit = sent["jobDriver"]["sparkSubmit"]
    assert submit["entryPoint"] == f"{settings.artifacts_uri}/{script}"
    assert submit["entryPointArguments"] == ["--staging", staging]  # no --master: the cluster's own
    conf = dict(re.findall(r"--conf (\S+?)=(\S+)", submit["sparkSubmitParameters"]))
    assert conf["spark.archives"] == f"{settings.artifacts_uri}/{ENVIRONMENT_ARCHIVE}#environment"
    assert conf["spark.sql.ansi.enabled"] == "true"
    injected = decode_param(conf["spark.emr-serverless.driverEnv.DAGSTER_PIPES_CONTEXT"])
    pipes_context = injected[PipesDefaultContextLoader.DIRECT_KEY]
    assert pipes_context["run_id"] == run_id and pipes_context["partition_key"] == DAY
    return pipes_context


class PlayedJobRuns:
    """The service's side of each StartJobRun (see the module docstring)."""

    def __init__(self, logs, locations: LakeLocations, tmp_path: Path, outcome: str = "work") -> None:
        self.logs, self.fs, self.outcome = logs, locations.filesystem, outcome
        self.requests: list[dict[str, Any]] = []
        self.staged_requests: list[dict[str, Any]] = []
        self.job_run_ids: list[str] = []
        self.scripts = {}
        for script, text in STAND_IN_DRIVERS.items():
            self.scripts[script] = tmp_path / f"stand-in-{script}"
            self.scripts[script].write_text(text)

    def attach(self, client):
        client.meta.events.register("provide-client-params.emr-serverless.StartJobRun", self._record)
        client.meta.events.register("after-call.emr-serverless.StartJobRun", self._run_driver)
        return client

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.requests.append(copy.deepcopy(params))

    def _run_driver(self, parsed: dict[str, Any], **_: Any) -> None:
        request, job_run_id = self.requests[-1], parsed["jobRunId"]
        self.job_run_ids.append(job_run_id)
        submit = request["jobDriver"]["sparkSubmit"]
        staging = submit["entryPointArguments"][1]
        self.staged_requests.append(json.loads(self.fs.cat_file(f"{staging}/{REQUEST_FILE}")))
        driver_env = dict(DRIVER_ENV.findall(submit["sparkSubmitParameters"]))
        driver = self.scripts[submit["entryPoint"].rsplit("/", 1)[1]]
        proc = subprocess.run(
            [sys.executable, str(driver), *submit["entryPointArguments"]],
            env={**os.environ, **driver_env, "STAND_IN_OUTCOME": self.outcome},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == (3 if self.outcome == "FAILED" else 0), proc.stderr[-2000:]
        stream = f"/applications/{request['applicationId']}/jobs/{job_run_id}/SPARK_DRIVER"
        for kind, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            self.logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=f"{stream}/{kind}")
            events = [{"timestamp": int(time.time() * 1000), "message": m} for m in text.splitlines() if m]
            if events:
                self.logs.put_log_events(
                    logGroupName=LOG_GROUP, logStreamName=f"{stream}/{kind}", logEvents=events
                )
        if self.outcome in ("FAILED", "CANCELLED"):
            job_run = get_backend("emr-serverless")[ACCOUNT][REGION].get_job_run(
                request["applicationId"], job_run_id
            )
            job_run.state = self.outcome
            job_run.state_details = (
                "Job failed, ExitCode: 3.\nDriver exited."
                if self.outcome == "FAILED"
                else "Job run cancelled."
            )


def played_resource(base: EmrServerlessResource, played: PlayedJobRuns) -> EmrServerlessResource:
    """The configured resource whose EMR client the test plays the service for."""

    class Played(EmrServerlessResource):
        def emr_client(self):
            return played.attach(super().emr_client())

    return Played(**{name: getattr(base, name) for name in EmrServerlessResource.model_fields})


@pytest.fixture
def emr_lake(aws_locations: LakeLocations, aws_env: str, monkeypatch: pytest.MonkeyPatch):
    """The lake buckets, an EMR Serverless application and log group, and the INSTAREC_EMR_* settings
    the run task gets from the spark stack, with INSTAREC_ENGINE=spark."""
    emr = boto3.client("emr-serverless", endpoint_url=aws_env, region_name=REGION)
    logs = boto3.client("logs", endpoint_url=aws_env, region_name=REGION)
    app = emr.create_application(
        name=f"instarec-test-{time.time_ns()}",
        releaseLabel="emr-7.9.0",
        type="SPARK",
        autoStartConfiguration={"enabled": True},
        autoStopConfiguration={"enabled": True, "idleTimeoutMinutes": 15},
    )
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=LOG_GROUP)
    settings = {
        "INSTAREC_ENGINE": "spark",
        "INSTAREC_EMR_APPLICATION_ID": app["applicationId"],
        "INSTAREC_EMR_JOB_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/instarec-test-emr-job",
        "INSTAREC_EMR_ARTIFACTS_URI": "s3://instarec-test-artifacts/emr-serverless/jobs/abc123",
        "INSTAREC_EMR_LOGS_URI": "s3://instarec-test-artifacts/emr-serverless/logs",
        "INSTAREC_EMR_LOG_GROUP": LOG_GROUP,
        "INSTAREC_EMR_STAGING_URI": f"s3://{aws_locations.clean_bucket}/emr-staging",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return emr, logs, EmrServerlessSettings.from_settings()


def _definitions(
    locations: LakeLocations, played: PlayedJobRuns | None = None, engine: str | None = None
) -> Definitions:
    """The pipeline on `locations` (engine: INSTAREC_ENGINE unless given), its EMR client played."""
    resources = build_resources(locations, engine=engine)
    if played is not None:
        resources["emr_serverless"] = played_resource(resources["emr_serverless"], played)
    return Definitions(
        assets=environment_assets(locations),
        asset_checks=clean_checks(),
        jobs=landing_jobs(),
        resources=resources,
    )


def _run_clean(locations: LakeLocations, played: PlayedJobRuns, tmp_path: Path, instance: DagsterInstance):
    land_folder(write_batch(tmp_path / "batch", success=False), locations, DAY)
    return materialize_partition(_definitions(locations, played), instance, DAY, through="clean")


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    return [entry["Key"] for entry in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_each_clean_step_is_a_job_run_on_the_application_and_publishes_from_staging(
    emr_lake, aws_locations: LakeLocations, aws_env: str, tmp_path: Path
) -> None:
    _emr, logs, settings = emr_lake
    played = PlayedJobRuns(logs, aws_locations, tmp_path)
    with DagsterInstance.ephemeral() as instance:
        reports = _run_clean(aws_locations, played, tmp_path, instance)
        run_id = instance.get_runs()[0].run_id
        events = {
            asset: instance.get_latest_materialization_event(AssetKey(asset)).asset_materialization
            for table in CLEAN_TABLES
            for asset in (f"clean_{table}", f"quarantined_{table}")
        }

    # one job run per clean step, each with the request the step built
    assert len(played.job_run_ids) == len(CLEAN_TABLES)
    by_table = {
        staged["table"]: (sent, staged)
        for sent, staged in zip(played.requests, played.staged_requests, strict=True)
    }
    assert set(by_table) == set(CLEAN_TABLES)
    sent, staged = by_table["orders"]
    staging = f"s3://{aws_locations.clean_bucket}/emr-staging/{run_id}-clean_orders"
    pipes_context = assert_job_request(
        sent, settings, JOB_SCRIPT, staging, job_run_name("orders", DAY, run_id), run_id
    )
    assert {"clean_orders", "quarantined_orders"} <= set(pipes_context["asset_keys"])
    assert pipes_context["extras"] == {}  # the request is in S3, not in the run's visible parameters
    assert (
        sent["configurationOverrides"]["monitoringConfiguration"]["cloudWatchLoggingConfiguration"][
            "logGroupName"
        ]
        == LOG_GROUP
    )
    # the staged request: the lake's s3:// URIs in the seed layout, staging under the staging prefix
    assert staged["staging"] == staging
    assert staged["inputs"] == {
        "raw_orders": f"s3://{aws_locations.raw_bucket}/raw_orders/year=2025/month=01/day=06/raw_orders.parquet"
    }
    lines = by_table["order_products"][1]["inputs"]
    assert lines["clean_orders"] == [
        f"s3://{aws_locations.clean_bucket}/clean_orders/year=2025/month=01/day=06/clean_orders.parquet"
    ]

    # published as the DuckDB engine publishes: one object per partition, staging emptied
    rows = {report.asset: report.rows for report in reports}
    assert rows["clean_orders"] == len(ORDERS)
    assert rows["clean_order_products"] == len(PRIOR_LINES) + len(TRAIN_LINES)
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    key = "clean_orders/year=2025/month=01/day=06/clean_orders.parquet"
    assert _keys(s3, aws_locations.clean_bucket, "clean_orders/") == [key]
    assert _keys(s3, aws_locations.clean_bucket, "emr-staging/") == []
    orders = events["clean_orders"]
    assert orders.metadata["engine"].value == "spark"
    assert orders.metadata["dagster/row_count"].value == len(ORDERS)
    assert (
        orders.metadata["row_accounting"].value
        == f"raw {len(ORDERS)} = clean {len(ORDERS)} + quarantined 0 + duplicates 0"
    )
    assert (
        orders.metadata["size_bytes"].value
        == s3.head_object(Bucket=aws_locations.clean_bucket, Key=key)["ContentLength"]
    )
    assert all(event.metadata["engine"].value == "spark" for event in events.values())


def _first_step(played: PlayedJobRuns) -> tuple[str, str, str]:
    """The table, Dagster run id and job run id of the first job run (the first step to fail)."""
    staging = played.staged_requests[0]["staging"]
    run_id, table = staging.rsplit("/", 1)[1].split("-clean_")
    return table, run_id, played.job_run_ids[0]


@pytest.mark.parametrize("state", ["FAILED", "CANCELLED"])
def test_a_failed_or_cancelled_job_run_ends_the_step_with_one_line_naming_run_and_table(
    emr_lake, aws_locations: LakeLocations, tmp_path: Path, state: str
) -> None:
    _emr, logs, settings = emr_lake
    played = PlayedJobRuns(logs, aws_locations, tmp_path, outcome=state)
    with DagsterInstance.ephemeral() as instance, pytest.raises(PipelineError) as failed:
        _run_clean(aws_locations, played, tmp_path, instance)
    table, run_id, job_run_id = _first_step(played)
    details = "Job failed, ExitCode: 3. Driver exited." if state == "FAILED" else "Job run cancelled."
    assert str(failed.value) == (
        f"clean_{table}: EMR Serverless job run {job_run_id} ({job_run_name(table, DAY, run_id)}) of "
        f"application {settings.application_id} ended {state}: {details}"
    )


def test_a_successful_job_run_that_staged_nothing_ends_the_step_with_one_line(
    emr_lake, aws_locations: LakeLocations, tmp_path: Path
) -> None:
    _emr, logs, settings = emr_lake
    played = PlayedJobRuns(logs, aws_locations, tmp_path, outcome="nothing")
    with DagsterInstance.ephemeral() as instance, pytest.raises(PipelineError) as failed:
        _run_clean(aws_locations, played, tmp_path, instance)
    table, run_id, job_run_id = _first_step(played)
    staging = played.staged_requests[0]["staging"]
    assert str(failed.value) == (
        f"clean_{table}: EMR Serverless job run {job_run_id} ({job_run_name(table, DAY, run_id)}) of "
        f"application {settings.application_id} ended SUCCESS but staged no output: "
        f"no {RESULT_FILE} at {staging}/{RESULT_FILE}"
    )


CURATED_TABLES = (*FEATURE_SET_DESCRIPTIONS, "affected_users")


def _features_on_emr(
    locations: LakeLocations, played: PlayedJobRuns, tmp_path: Path, instance: DagsterInstance
):
    """The batch landed and cleaned on DuckDB (a clean job run each would cost ~15 s), then the
    curated feature step alone with engine=spark: one job run."""
    land_folder(write_batch(tmp_path / "batch", success=False), locations, DAY)
    materialize_partition(_definitions(locations, engine="duckdb"), instance, DAY, through="clean")
    return (
        _definitions(locations, played)
        .resolve_job_def(LANDING_JOB_NAME)
        .execute_in_process(
            partition_key=DAY,
            instance=instance,
            asset_selection=[AssetKey(name) for name in CURATED_TABLES],
            raise_on_error=False,
        )
    )


def _tables(conn: duckdb.DuckDBPyConnection, uris: dict[str, str]) -> dict[str, list[tuple]]:
    return {
        name: conn.execute(
            f"SELECT * FROM read_parquet('{uri}', hive_partitioning = false) ORDER BY ALL"
        ).fetchall()
        for name, uri in uris.items()
    }


def test_the_feature_build_is_a_job_run_on_the_application_and_publishes_from_staging(
    emr_lake, aws_locations: LakeLocations, aws_env: str, tmp_path: Path
) -> None:
    _emr, logs, settings = emr_lake
    played = PlayedJobRuns(logs, aws_locations, tmp_path)
    with DagsterInstance.ephemeral() as instance:
        result = _features_on_emr(aws_locations, played, tmp_path, instance)
        assert result.success
        events = {
            name: instance.get_latest_materialization_event(AssetKey(name)).asset_materialization
            for name in CURATED_TABLES
        }
    run_id = result.run_id

    # one job run of the features job, with the request the step built
    [sent], [staged] = played.requests, played.staged_requests
    staging = f"s3://{aws_locations.clean_bucket}/emr-staging/{run_id}-curated"
    pipes_context = assert_job_request(
        sent, settings, FEATURES_JOB_SCRIPT, staging, step_job_run_name("features", DAY, run_id), run_id
    )
    assert set(CURATED_TABLES) <= set(pipes_context["asset_keys"])
    assert pipes_context["extras"] == {}  # the request is in S3, not in the run's visible parameters
    # the staged request: the clean zone's s3:// URIs, staging under the staging prefix
    clean = {
        table: aws_locations.partition_uri("clean", table, DAY)
        for table in (
            "clean_orders",
            "clean_order_products",
            "clean_products",
            "clean_aisles",
            "clean_departments",
        )
    }
    assert clean["clean_orders"] == (
        f"s3://{aws_locations.clean_bucket}/clean_orders/year=2025/month=01/day=06/clean_orders.parquet"
    )
    assert staged == {
        "orders": [clean["clean_orders"]],
        "order_products": [clean["clean_order_products"]],
        "products": clean["clean_products"],
        "aisles": clean["clean_aisles"],
        "departments": clean["clean_departments"],
        "staging": staging,
        "previous": None,  # the first batch: a full build
    }

    # published into the curated bucket with one object per table, the staging prefix emptied
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    for name in CURATED_TABLES:
        assert _keys(s3, aws_locations.curated_bucket, f"{name}/") == [
            f"{name}/year=2025/month=01/day=06/{name}.parquet"
        ]
    assert _keys(s3, aws_locations.clean_bucket, "emr-staging/") == []
    # the rows a DuckDB full build of the same clean zone gives
    with duckdb.connect() as conn:
        attach_filesystem(conn, aws_locations.filesystem)
        request = FeatureRequest(
            orders=(clean["clean_orders"],),
            order_products=(clean["clean_order_products"],),
            products=clean["clean_products"],
            aisles=clean["clean_aisles"],
            departments=clean["clean_departments"],
            staging=str(tmp_path / "expected"),
        )
        build = run_full_build(conn, request)
        expected = {name: str(getattr(build.tables, name).path) for name in FEATURE_SET_DESCRIPTIONS}
        expected["affected_users"] = str(build.affected.path)
        published = {name: aws_locations.partition_uri("curated", name, DAY) for name in CURATED_TABLES}
        assert _tables(conn, published) == _tables(conn, expected)
    assert build.tables.training_set.row_count > 0
    for name, event in events.items():
        assert (event.metadata["engine"].value, event.metadata["mode"].value) == ("spark", "full"), name
    training = events["training_set"]
    assert training.metadata["dagster/row_count"].value == build.tables.training_set.row_count
    assert (
        training.metadata["size_bytes"].value
        == s3.head_object(
            Bucket=aws_locations.curated_bucket,
            Key="training_set/year=2025/month=01/day=06/training_set.parquet",
        )["ContentLength"]
    )


def _innermost_error(result) -> Any:
    [failure] = [event for event in result.all_events if event.is_step_failure]
    error = failure.event_specific_data.error
    while error.cause is not None:
        error = error.cause
    return error


@pytest.mark.parametrize("outcome", ["FAILED", "nothing"])
def test_a_failed_feature_job_run_ends_the_step_with_one_line(
    emr_lake, aws_locations: LakeLocations, tmp_path: Path, outcome: str
) -> None:
    _emr, logs, settings = emr_lake
    played = PlayedJobRuns(logs, aws_locations, tmp_path, outcome=outcome)
    with DagsterInstance.ephemeral() as instance:
        result = _features_on_emr(aws_locations, played, tmp_path, instance)
        assert instance.get_latest_materialization_event(AssetKey("training_set")) is None
    assert not result.success
    error = _innermost_error(result)
    [job_run_id] = played.job_run_ids
    run = f"EMR Serverless job run {job_run_id} ({step_job_run_name('features', DAY, result.run_id)})"
    staging = played.staged_requests[0]["staging"]
    if outcome == "FAILED":
        assert error.cls_name == "EmrJobRunFailed"
        line = f"{run} of application {settings.application_id} ended FAILED: Job failed, ExitCode: 3. Driver exited."
    else:
        assert error.cls_name == "EmrStagedOutputMissing"
        line = (
            f"{run} of application {settings.application_id} ended SUCCESS but staged no output: "
            f"no {RESULT_FILE} at {staging}/{RESULT_FILE}"
        )
    assert (
        error.message.strip()
        == f"instarec_assets.lake.emr_serverless.{error.cls_name}: curated_features_step: {line}"
    )
