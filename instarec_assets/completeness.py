"""Whether each landing batch is complete, incomplete or failed, read from the Dagster instance.

A batch is complete when every asset of the landing job has a materialisation of it no older than
the batch's latest landing (its `raw_orders` materialisation) and no blocking check of it failed
since. The landing sensor re-requests batches that are not; `instarec status` shows the state.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

COMPLETE = "complete"
INCOMPLETE = "incomplete"
FAILED = "failed"
RUNNING = "running"

LANDING_ASSET = AssetKey("raw_orders")
# Run tags that say which process on which machine runs a CLI run, so a later run can tell a run
# whose process died (kill -9, a lost laptop lid) from one still going.
HOST_TAG = "instarec/host"
PID_TAG = "instarec/pid"
IN_PROGRESS = (DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)
ENDED_BADLY = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


@dataclass(frozen=True)
class BatchState:
    """One landing batch's state and, when it is not complete, why."""

    partition: str
    state: str
    detail: str = ""
    run_id: str | None = None
    missing: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        return f"{self.partition}  {self.state}" + (f"  ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class BatchTargets:
    """What a complete batch has: every asset of the landing job and its blocking checks."""

    assets: tuple[AssetKey, ...]
    blocking_checks: tuple[AssetCheckKey, ...]

    @classmethod
    def of(cls, asset_graph) -> BatchTargets:
        assets = tuple(sorted(asset_graph.materializable_asset_keys, key=lambda key: key.to_user_string()))
        checks = tuple(
            sorted(
                (key for key in asset_graph.asset_check_keys if asset_graph.get(key).blocking),
                key=lambda key: key.to_user_string(),
            )
        )
        return cls(assets, checks)


def cli_run_tags() -> dict[str, str]:
    """Tags for a run executed in this process (`instarec materialize`)."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def batch_state(
    instance: DagsterInstance,
    job_name: str,
    partition: str,
    targets: BatchTargets,
) -> BatchState:
    """The state of one batch: complete, running, failed (with the failing step) or incomplete
    (with what is missing)."""
    runs = instance.get_runs(RunsFilter(job_name=job_name, tags={"dagster/partition": partition}), limit=1)
    latest_run = runs[0] if runs else None
    if latest_run is not None and latest_run.status in IN_PROGRESS:
        return BatchState(partition, RUNNING, f"run {latest_run.run_id[:8]}", latest_run.run_id)

    assets = targets.assets
    landing = _latest_storage_id(instance, LANDING_ASSET, partition)
    missing = [
        key.to_user_string()
        for key in assets
        if landing is None or (_latest_storage_id(instance, key, partition) or -1) < landing
    ]
    failed_checks = _failed_checks(instance, targets.blocking_checks, partition, landing)
    if not missing and not failed_checks:
        return BatchState(partition, COMPLETE, run_id=latest_run.run_id if latest_run else None)
    if latest_run is not None and latest_run.status in ENDED_BADLY:
        step = failed_step(instance, latest_run.run_id) or (
            f"check {failed_checks[0]}" if failed_checks else "the run"
        )
        return BatchState(
            partition, FAILED, f"{step} failed in run {latest_run.run_id[:8]}", latest_run.run_id
        )
    if failed_checks:
        return BatchState(partition, FAILED, f"check {failed_checks[0]} failed", None, tuple(missing))
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return BatchState(
        partition,
        INCOMPLETE,
        f"{len(missing)} of {len(assets)} assets not materialised since the landing: {shown}",
        latest_run.run_id if latest_run else None,
        tuple(missing),
    )


def batch_states(
    instance: DagsterInstance,
    job_name: str,
    partitions: Iterable[str],
    targets: BatchTargets,
) -> list[BatchState]:
    return [batch_state(instance, job_name, key, targets) for key in sorted(partitions)]


def failed_step(instance: DagsterInstance, run_id: str) -> str | None:
    """The step that failed in a run: its first failed step, else a step it started and never
    finished (the process died under it)."""
    records = instance.get_records_for_run(
        run_id,
        of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE},
    ).records
    started: dict[str, None] = {}
    for record in records:
        entry = record.event_log_entry
        event_type = entry.dagster_event.event_type
        if event_type == DagsterEventType.STEP_FAILURE:
            return entry.step_key
        if event_type == DagsterEventType.STEP_START:
            started[entry.step_key] = None
        else:
            started.pop(entry.step_key, None)
    return next(iter(started), None)


def latest_landing(instance: DagsterInstance, partition: str) -> int | None:
    """The storage id of the batch's latest landing (its raw_orders materialisation)."""
    return _latest_storage_id(instance, LANDING_ASSET, partition)


def _latest_storage_id(instance: DagsterInstance, key: AssetKey, partition: str) -> int | None:
    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    )
    return result.records[0].storage_id if result.records else None


def _failed_checks(
    instance: DagsterInstance, checks: Sequence[AssetCheckKey], partition: str, landing: int | None
) -> list[str]:
    if not checks:
        return []
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        list(checks), partition_filter=PartitionKeyFilter(key=partition)
    )
    return sorted(
        f"{key.asset_key.to_user_string()}:{key.name}"
        for key, record in latest.items()
        if record.status == AssetCheckExecutionRecordStatus.FAILED
        and (landing is None or record.id >= landing)
    )


def reap_dead_runs(instance: DagsterInstance, job_name: str) -> list[str]:
    """Mark failed every in-progress run of the job whose process on this machine is gone.

    Dagster's own run monitoring does this where the run launcher can check a run worker's health
    (ECS in aws mode); the local launchers cannot, so a killed local run would stay STARTED forever.
    """
    host = socket.gethostname()
    reaped = []
    for record in instance.get_run_records(RunsFilter(job_name=job_name, statuses=list(IN_PROGRESS))):
        run = record.dagster_run
        pid = _run_process(instance, run)
        if pid is None or run.tags.get(HOST_TAG, host) != host or _alive(pid, record.start_time):
            continue
        instance.report_run_failed(run, f"the run's process (pid {pid}) is gone; marked failed by instarec")
        reaped.append(run.run_id)
    free_slots_of_ended_runs(instance)
    return reaped


def free_slots_of_ended_runs(instance: DagsterInstance) -> int:
    """Release the pool slots still claimed by runs that have ended.

    A killed run keeps its `lake_history` slot, and every later run would wait for it forever; the
    Dagster daemon frees such slots (`free_slots_after_run_end_seconds`), but a CLI run has no daemon.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return 0
    holders = storage.get_concurrency_run_ids()
    if not holders:
        return 0
    ended = instance.get_run_records(
        RunsFilter(run_ids=sorted(holders), statuses=[*ENDED_BADLY, DagsterRunStatus.SUCCESS])
    )
    return sum(storage.free_concurrency_slots_for_run(record.dagster_run.run_id) or 0 for record in ended)


def _run_process(instance: DagsterInstance, run) -> int | None:
    """The pid of the process executing a run: the CLI's own tag, else the run worker's engine event."""
    if PID_TAG in run.tags:
        return int(run.tags[PID_TAG])
    for record in instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.ENGINE_EVENT, limit=20
    ).records:
        metadata = record.event_log_entry.dagster_event.engine_event_data.metadata
        if "pid" in metadata:
            return int(metadata["pid"].value)
    return None


def _alive(pid: int, started: float | None) -> bool:
    """Whether `pid` is still the process that started the run (not a later process given its pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or process.create_time() <= started + 1.0
    except psutil.Error:
        return False


def reclaim_scratch(instance: DagsterInstance, scratch: Path) -> list[Path]:
    """Remove the staging folders and files of runs that are no longer in progress.

    Every step stages under `<scratch>/<run_id>-<label>`; a run killed mid-step leaves its folder.
    """
    reclaimed = []
    if not scratch.is_dir():
        return reclaimed
    in_progress = {run.run_id for run in instance.get_runs(RunsFilter(statuses=list(IN_PROGRESS)))}
    for entry in sorted(scratch.iterdir()):
        run_id = entry.name[:36]
        if len(run_id) != 36 or run_id.count("-") != 4 or run_id in in_progress:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        reclaimed.append(entry)
    return reclaimed
