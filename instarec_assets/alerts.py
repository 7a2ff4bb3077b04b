"""The run-failure alert: every failed run is logged where an operator looks and, in aws mode, published
to the SNS topic of failed runs (INSTAREC_ALERT_TOPIC_ARN, the orchestration stack's RunFailureTopic).

The daemon evaluates `run_failure_alert` after each failed run of this code location (a run started
by the CLI, the UI or the landing sensor alike). Its log line, in the sensor's tick log in the UI and
in the daemon's log, names the run id, the job, the partition, the failed steps and the error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from instarec_assets.backends.alert_topic import RunFailure, publish_failure
from instarec_assets.settings import Settings

if TYPE_CHECKING:
    from dagster_shared.error import SerializableErrorInfo


def _root_message(error: SerializableErrorInfo | None) -> str:
    """The innermost cause's first line: the user's error, not Dagster's wrapper around it."""
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    if error is None:
        return ""
    lines = [line.strip() for line in (error.message or "").strip().splitlines() if line.strip()]
    return lines[0] if lines else error.cls_name or ""


def describe_failure(context: RunFailureSensorContext) -> RunFailure:
    """The failed run as an operator reads it: the steps that failed and the first step's error
    (else the run's own failure message)."""
    run = context.dagster_run
    step_failures = context.get_step_failure_events()
    steps = tuple(dict.fromkeys(event.step_key for event in step_failures if event.step_key))
    errors = [
        _root_message(event.event_specific_data.error)
        for event in step_failures
        if event.event_specific_data is not None and getattr(event.event_specific_data, "error", None)
    ]
    error = next((message for message in errors if message), "") or (context.failure_event.message or "")
    return RunFailure(
        run_id=run.run_id,
        job_name=run.job_name,
        partition=run.tags.get("dagster/partition"),
        failed_steps=steps,
        error=" ".join(error.split()),
        tags={key: value for key, value in run.tags.items() if not key.startswith(".")},
    )


def report_failure(failure: RunFailure, settings: Settings, log: logging.Logger) -> str | None:
    """Log the failure; in aws mode publish it too. Returns the SNS message id, if published.

    A publish that still fails after the client's retries is logged, not raised: the run already
    failed, and a raising sensor would retry the same alert on every tick."""
    log.error(f"run failed: {failure.summary}")
    if settings.env != "aws":
        return None
    if not settings.alert_topic_arn:
        log.warning("INSTAREC_ALERT_TOPIC_ARN is not set: the run failure was logged, not published")
        return None
    try:
        message_id = publish_failure(
            failure, settings.alert_topic_arn, settings.region, settings.endpoint_url
        )
    except Exception as error:  # botocore's errors and connection failures alike
        log.error(f"publishing run {failure.run_id}'s failure to {settings.alert_topic_arn} failed: {error}")
        return None
    log.info(f"published run {failure.run_id}'s failure to {settings.alert_topic_arn} (message {message_id})")
    return message_id


@run_failure_sensor(
    name="run_failure_alert",
    description="Logs each failed run (run id, job, partition, failed steps, error); in aws mode "
    "also publishes it to the SNS topic INSTAREC_ALERT_TOPIC_ARN.",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def run_failure_alert(context: RunFailureSensorContext) -> None:
    report_failure(describe_failure(context), Settings.from_env(), context.log)
