"""Publishing a failed run to the SNS topic an operator subscribes to (aws mode).

Dagster-free: `instarec_assets.alerts` builds the `RunFailure` from the run-failure sensor's context and
calls `publish_failure`. The client retries throttling and connection errors (standard mode, 5
attempts) with short timeouts, so a slow SNS endpoint never holds the sensor daemon for long.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import boto3
from botocore.config import Config

RETRY_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=10)
SUBJECT_LIMIT = 100  # SNS rejects longer subjects
MESSAGE_LIMIT = 256 * 1024  # bytes; SNS rejects longer messages


@dataclass(frozen=True)
class RunFailure:
    """What an operator needs to act on a failed run, in the order they read it."""

    run_id: str
    job_name: str
    partition: str | None
    failed_steps: tuple[str, ...]
    error: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One line for logs: run, job, partition, step and error."""
        steps = ", ".join(self.failed_steps) or "no step (the run failed outside a step)"
        partition = f" partition {self.partition}" if self.partition else ""
        return f"run {self.run_id} of job {self.job_name}{partition} failed at {steps}: {self.error}"

    @property
    def subject(self) -> str:
        partition = f" {self.partition}" if self.partition else ""
        subject = f"instarec run failed: {self.job_name}{partition}"
        return subject if len(subject) <= SUBJECT_LIMIT else subject[: SUBJECT_LIMIT - 3] + "..."

    @property
    def message(self) -> str:
        lines = [
            self.summary,
            "",
            f"run id: {self.run_id}",
            f"job: {self.job_name}",
            f"partition: {self.partition or '-'}",
            f"failed steps: {', '.join(self.failed_steps) or '-'}",
            f"error: {self.error}",
        ]
        text = "\n".join(lines)
        encoded = text.encode()
        if len(encoded) > MESSAGE_LIMIT:
            text = encoded[: MESSAGE_LIMIT - 16].decode(errors="ignore") + "\n[truncated]"
        return text


def publish_failure(failure: RunFailure, topic_arn: str, region: str, endpoint_url: str = "") -> str:
    """Publish one message for the failed run; returns SNS's message id.

    The message attributes carry the job and run id, so subscribers can filter by job."""
    client = boto3.client("sns", region_name=region, endpoint_url=endpoint_url or None, config=RETRY_CONFIG)
    response = client.publish(
        TopicArn=topic_arn,
        Subject=failure.subject,
        Message=failure.message,
        MessageAttributes={
            "job": {"DataType": "String", "StringValue": failure.job_name},
            "run_id": {"DataType": "String", "StringValue": failure.run_id},
        },
    )
    return response["MessageId"]
