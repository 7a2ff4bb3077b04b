"""The run-failure alert: a real failed run (Dagster's in-process executor), the sensor evaluated with
Dagster's run-status sensor context, and in aws mode the message read back from an SQS queue
subscribed to the SNS topic on the moto server (real HTTP)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import boto3
import pytest
from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    asset,
    build_run_status_sensor_context,
    materialize,
)

from instarec_assets.alerts import describe_failure, report_failure, run_failure_alert
from instarec_assets.backends.alert_topic import SUBJECT_LIMIT, RunFailure
from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.settings import Settings
from instarec_assets_tests.aws_fixtures import REGION

batches = DynamicPartitionsDefinition(name="alert_test_batches")
ERROR = "orders.csv line 3: column order_dow holds 'x', not a day 0-6"


@asset(partitions_def=batches)
def landed_orders() -> int:
    return 1


@asset(partitions_def=batches)
def broken_clean_orders(landed_orders: int) -> int:
    raise ValueError(ERROR)


@pytest.fixture
def failed_run(tmp_path: Path):
    """A run of two assets for partition 2025-01-06 whose second step raises; its failure context."""
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batches.name, ["2025-01-06"])
    result = materialize(
        [landed_orders, broken_clean_orders],
        instance=instance,
        partition_key="2025-01-06",
        raise_on_error=False,
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure_event = result.get_run_failure_event()
    context = build_run_status_sensor_context(
        sensor_name="run_failure_alert",
        dagster_event=failure_event,
        dagster_instance=instance,
        dagster_run=run,
    ).for_run_failure()
    return result.run_id, context


def test_failure_names_run_job_partition_step_and_the_users_error(failed_run) -> None:
    run_id, context = failed_run
    failure = describe_failure(context)
    assert failure.run_id == run_id
    assert failure.job_name == "__ephemeral_asset_job__"
    assert failure.partition == "2025-01-06"
    assert failure.failed_steps == ("broken_clean_orders",)
    assert failure.error == f"ValueError: {ERROR}"
    assert failure.summary == (
        f"run {run_id} of job __ephemeral_asset_job__ partition 2025-01-06 failed at broken_clean_orders: "
        f"ValueError: {ERROR}"
    )


def test_local_mode_logs_the_failure_and_publishes_nothing(failed_run, caplog) -> None:
    _, context = failed_run
    log = logging.getLogger("instarec.test_alerts")
    with caplog.at_level(logging.INFO, logger="instarec.test_alerts"):
        assert report_failure(describe_failure(context), Settings(env="local"), log) is None
    assert [record.levelname for record in caplog.records] == ["ERROR"]
    assert caplog.records[0].getMessage().startswith("run failed: run ")
    assert "broken_clean_orders" in caplog.records[0].getMessage()


def test_aws_mode_without_a_topic_says_so(failed_run, caplog) -> None:
    _, context = failed_run
    log = logging.getLogger("instarec.test_alerts")
    with caplog.at_level(logging.INFO, logger="instarec.test_alerts"):
        assert report_failure(describe_failure(context), Settings(env="aws"), log) is None
    assert "INSTAREC_ALERT_TOPIC_ARN is not set" in caplog.records[-1].getMessage()


def _subscribed_queue(endpoint: str) -> tuple[str, str]:
    sns = boto3.client("sns", endpoint_url=endpoint, region_name=REGION)
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)
    topic_arn = sns.create_topic(Name="instarec-test-run-failures")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="instarec-test-operator")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return topic_arn, queue_url


@pytest.mark.aws
def test_aws_mode_sensor_publishes_the_failure_to_the_topic(failed_run, aws_env, monkeypatch) -> None:
    run_id, context = failed_run
    topic_arn, queue_url = _subscribed_queue(aws_env)
    monkeypatch.setenv("INSTAREC_ENV", "aws")
    monkeypatch.setenv("INSTAREC_AWS_ENDPOINT_URL", aws_env)
    monkeypatch.setenv("INSTAREC_ALERT_TOPIC_ARN", topic_arn)

    run_failure_alert(context)

    sqs = boto3.client("sqs", endpoint_url=aws_env, region_name=REGION)
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=2)["Messages"]
    assert len(messages) == 1
    envelope = json.loads(messages[0]["Body"])
    assert envelope["TopicArn"] == topic_arn
    assert envelope["Subject"] == "instarec run failed: __ephemeral_asset_job__ 2025-01-06"
    body = envelope["Message"].splitlines()
    assert body[0].startswith(f"run {run_id} of job __ephemeral_asset_job__ partition 2025-01-06 failed at")
    assert f"run id: {run_id}" in body
    assert "failed steps: broken_clean_orders" in body
    assert f"error: ValueError: {ERROR}" in body
    assert envelope["MessageAttributes"]["run_id"]["Value"] == run_id
    assert envelope["MessageAttributes"]["job"]["Value"] == "__ephemeral_asset_job__"


@pytest.mark.aws
def test_a_topic_that_does_not_exist_is_logged_not_raised(failed_run, aws_env, caplog) -> None:
    _, context = failed_run
    settings = Settings(
        env="aws",
        region=REGION,
        endpoint_url=aws_env,
        alert_topic_arn=f"arn:aws:sns:{REGION}:123456789012:instarec-missing-topic",
    )
    log = logging.getLogger("instarec.test_alerts")
    with caplog.at_level(logging.INFO, logger="instarec.test_alerts"):
        assert report_failure(describe_failure(context), settings, log) is None
    last = caplog.records[-1].getMessage()
    assert "instarec-missing-topic failed:" in last and "NotFound" in last


def test_subject_stays_within_the_sns_limit() -> None:
    failure = RunFailure("r1", "j" * 200, "2025-01-06", ("s",), "e")
    assert len(failure.subject) == SUBJECT_LIMIT and failure.subject.endswith("...")


def test_the_code_location_runs_the_alert_sensor_by_default(tmp_path: Path) -> None:
    defs = build_definitions(LakeLocations(home=str(tmp_path)))
    sensor = defs.resolve_sensor_def("run_failure_alert")
    assert sensor is run_failure_alert
    assert sensor.default_status == DefaultSensorStatus.RUNNING
