"""landing_sensor: one run per complete landing folder (`YYYY-MM-DD/` with a `_SUCCESS` marker),
and bounded repair runs for batches left incomplete or failed."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from instarec_assets.completeness import (
    COMPLETE,
    RUNNING,
    BatchTargets,
    batch_state,
    latest_landing,
    reap_dead_runs,
)
from instarec_assets.lake.locations import LakeConfigError, parse_partition_key
from instarec_assets.partitions import LANDING_BATCHES, landing_batches
from instarec_assets.resources import LakeResource

LANDING_JOB_NAME = "landing_to_lake"
# A batch that is not complete after its run is re-run this many times, waiting
# REPAIR_BACKOFF_SECONDS, then twice that, ... in between; then it is left failed (instarec status).
MAX_REPAIRS = 3
REPAIR_BACKOFF_SECONDS = 120.0


@dataclass
class LandingCursor:
    """What the sensor remembers between ticks (its cursor, as JSON)."""

    seen: list[str] = field(default_factory=list)
    # batch -> the landing (raw_orders materialisation storage id) it was found complete for
    complete: dict[str, int] = field(default_factory=dict)
    # batch -> [repair runs requested, time of the last one]
    repairs: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> LandingCursor:
        if not text:
            return cls()
        loaded = json.loads(text)
        if isinstance(loaded, list):  # the cursor before repairs: the folders seen
            return cls(seen=loaded)
        return cls(**loaded)

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@sensor(
    job_name=LANDING_JOB_NAME,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Watches the landing area; each new folder with a _SUCCESS marker becomes a landing batch "
        "(a partition) and starts one run for it. A batch whose run died or failed is re-run up to "
        f"{MAX_REPAIRS} times with backoff, then left failed (instarec status shows it)."
    ),
)
def landing_sensor(context: SensorEvaluationContext, lake: LakeResource) -> SensorResult | SkipReason:
    cursor = LandingCursor.parse(context.cursor)
    before = cursor.dump()
    seen = set(cursor.seen)
    registered = set(context.instance.get_dynamic_partitions(LANDING_BATCHES))
    if not lake.locations.is_aws:  # ECS reports dead run workers itself (run monitoring)
        for run_id in reap_dead_runs(context.instance, LANDING_JOB_NAME):
            context.log.warning(f"run {run_id} had no live process; marked failed")
    targets = BatchTargets.of(context.repository_def.asset_graph)
    now = time.time()
    run_requests = []
    for name, complete in lake.locations.landing_batches().items():
        try:
            parse_partition_key(name)
        except LakeConfigError as error:
            if name not in seen:
                context.log.warning(f"landing folder {name!r} skipped: {error}")
                seen.add(name)
            continue
        if name in cursor.complete and latest_landing(context.instance, name) == cursor.complete[name]:
            continue  # complete for this landing; nothing to check again
        if not complete:
            continue  # still being copied; picked up once its _SUCCESS marker appears
        first_time = name not in seen
        seen.add(name)
        state = batch_state(context.instance, LANDING_JOB_NAME, name, targets)
        if state.state == COMPLETE:
            cursor.complete[name] = latest_landing(context.instance, name) or -1
            cursor.repairs.pop(name, None)
            if first_time:
                context.log.info(f"landing folder {name!r} is already materialized; not run again")
            continue
        cursor.complete.pop(name, None)
        if state.state == RUNNING:
            continue
        if state.run_id is None:
            # Never run: the first request, once (a requested run not yet created is not repaired).
            if first_time:
                run_requests.append(RunRequest(run_key=f"landing-{name}", partition_key=name))
            continue
        count, last = cursor.repairs.get(name, [0, 0.0])
        if count >= MAX_REPAIRS:
            continue  # left failed and visible: instarec status, the run list
        if now - last < REPAIR_BACKOFF_SECONDS * 2**count:
            continue
        cursor.repairs[name] = [count + 1, now]
        context.log.warning(
            f"batch {name} is {state.state} ({state.detail}); repair run {count + 1} of {MAX_REPAIRS}"
        )
        run_requests.append(
            RunRequest(
                # the landing's id keeps run keys of a re-landed batch's repairs from repeating
                run_key=f"landing-{name}-{latest_landing(context.instance, name)}-repair-{count + 1}",
                partition_key=name,
                tags={"instarec/repair": str(count + 1)},
            )
        )
    cursor.seen = sorted(seen)
    if not run_requests and cursor.dump() == before:
        return SkipReason("no new complete landing folders and no batch to repair")
    new_batches = sorted(
        request.partition_key for request in run_requests if request.partition_key not in registered
    )
    return SensorResult(
        run_requests=run_requests,
        cursor=cursor.dump(),
        dynamic_partitions_requests=[landing_batches.build_add_request(new_batches)] if new_batches else [],
    )
