"""landing_sensor: one run per complete landing folder (`YYYY-MM-DD/` with a `_SUCCESS` marker)."""

import json

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from instarec_assets.lake.locations import LakeConfigError, parse_partition_key
from instarec_assets.partitions import LANDING_BATCHES, landing_batches
from instarec_assets.resources import LakeResource

LANDING_JOB_NAME = "landing_to_lake"


@sensor(
    job_name=LANDING_JOB_NAME,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Watches the landing area; each new folder with a _SUCCESS marker becomes a landing batch "
        "(a partition) and starts one run for it."
    ),
)
def landing_sensor(context: SensorEvaluationContext, lake: LakeResource) -> SensorResult | SkipReason:
    seen: set[str] = set(json.loads(context.cursor)) if context.cursor else set()
    registered = set(context.instance.get_dynamic_partitions(LANDING_BATCHES))
    # Partitions already landed by `instarec materialize` (or an earlier sensor) are not run again.
    already_materialized = context.instance.get_materialized_partitions(AssetKey("raw_orders"))
    run_requests = []
    for name, complete in lake.locations.landing_batches().items():
        if name in seen:
            continue
        try:
            parse_partition_key(name)
        except LakeConfigError as error:
            context.log.warning(f"landing folder {name!r} skipped: {error}")
            seen.add(name)
            continue
        if not complete:
            continue  # still being copied; picked up once its _SUCCESS marker appears
        seen.add(name)
        if name in already_materialized:
            context.log.info(f"landing folder {name!r} is already materialized; not run again")
            continue
        run_requests.append(RunRequest(run_key=f"landing-{name}", partition_key=name))
    if not run_requests and seen == set(json.loads(context.cursor or "[]")):
        return SkipReason("no new complete landing folders")
    new_batches = sorted(
        request.partition_key for request in run_requests if request.partition_key not in registered
    )
    return SensorResult(
        run_requests=run_requests,
        cursor=json.dumps(sorted(seen)),
        dynamic_partitions_requests=[landing_batches.build_add_request(new_batches)] if new_batches else [],
    )
