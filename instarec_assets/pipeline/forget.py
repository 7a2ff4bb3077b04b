"""Run the `forget_shopper` job for `instarec forget`, against the persistent instance (so the run
shows in the UI like a landing run), and hand back the audit record or one error line."""

from __future__ import annotations

import json
import uuid
from typing import Any

from dagster import DagsterEventType

from instarec_assets.assets.privacy import FORGET_JOB_NAME
from instarec_assets.completeness import cli_run_tags
from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline import runner
from instarec_assets.pipeline.runner import PipelineError, _first_line


def run_forget(
    locations: LakeLocations, user_id: int, *, reason: str, requested_by: str, withdraw: bool
) -> tuple[str, dict[str, Any]]:
    """Execute the job in this process; the audit record's URI and the record. PipelineError with the
    op's first error line when it fails (unknown user, nothing to withdraw, an unreachable store)."""
    # Looked up on the module when the job runs (as cli.py does): a copy bound at import time would keep
    # whatever `runner.dagster_instance` was then, e.g. a test's patch returning its since-disposed instance.
    instance = runner.dagster_instance(locations)
    defs = build_definitions(locations)
    config = {"user_id": user_id, "reason": reason, "requested_by": requested_by, "withdraw": withdraw}
    result = defs.resolve_job_def(FORGET_JOB_NAME).execute_in_process(
        run_config={
            "ops": {"forget_shopper_op": {"config": config}},
            "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
        },
        instance=instance,
        tags=cli_run_tags(),
        raise_on_error=False,
        run_id=str(uuid.uuid4()),
    )
    if not result.success:
        failures = [
            _first_line(event.event_specific_data.error)
            for event in result.all_events
            if event.event_type == DagsterEventType.STEP_FAILURE
        ]
        raise PipelineError(failures[0] if failures else "the forget_shopper run failed")
    output = result.output_for_node("forget_shopper_op")
    return output["audit_uri"], json.loads(output["record"])
