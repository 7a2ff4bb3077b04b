"""The history a batch reads: every registered landing batch up to it, complete and in date order.

A step of batch D that reads history needs every earlier batch's partition of what it reads. When
one is missing the answer depends on why: a run of that batch still in flight (two batches landed
together, a sensor run racing a CLI run) makes this step wait and retry, so concurrent runs end
with the same lake as the same runs in order; a batch with no run yet gets a short grace period (its
run may be about to start); a batch whose runs all ended without it is a one-line failure naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRunStatus, Failure, RetryRequested, RunsFilter

from instarec_assets.partitions import LANDING_BATCHES

IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class HistoryWait:
    """How long a step waits for an earlier batch whose run is still in flight."""

    seconds: float = 10.0
    retries: int = 90
    # Tries while an earlier batch has no run at all (one may be about to start).
    grace_retries: int = 3


DEFAULT_HISTORY_WAIT = HistoryWait()


def registered_batches(instance: DagsterInstance) -> list[str]:
    """Every landing batch Dagster knows, in date order."""
    return sorted(instance.get_dynamic_partitions(LANDING_BATCHES))


def batch_in_flight(instance: DagsterInstance, partition_key: str, own_run_id: str) -> bool:
    """Whether another run of that batch is queued or running."""
    records = instance.get_run_records(
        RunsFilter(statuses=IN_FLIGHT, tags={"dagster/partition": partition_key}), limit=5
    )
    return any(record.dagster_run.run_id != own_run_id for record in records)


def batch_ever_run(instance: DagsterInstance, partition_key: str, own_run_id: str) -> bool:
    """Whether any other run of that batch exists, finished or not."""
    records = instance.get_run_records(RunsFilter(tags={"dagster/partition": partition_key}), limit=5)
    return any(record.dagster_run.run_id != own_run_id for record in records)


def require_complete(
    table: str,
    partition_key: str,
    earlier_keys: Iterable[str],
    exists: Callable[[str], bool],
    instance: DagsterInstance,
    run_id: str,
    wait: HistoryWait,
) -> None:
    """Raise unless every earlier batch of `table` is stored: retry while its run is in flight."""
    missing = [key for key in earlier_keys if key < partition_key and not exists(key)]
    if not missing:
        return
    first = missing[0]
    not_materialised = (
        f"{table}: earlier batch {first} is not materialised; batch {partition_key} reads the history "
        f"up to it, so materialise batches in date order (instarec materialize --partition {first})"
    )
    if batch_in_flight(instance, first, run_id):
        raise RetryRequested(max_retries=wait.retries, seconds_to_wait=wait.seconds) from Failure(
            f"{not_materialised}; its run did not finish in time"
        )
    if not batch_ever_run(instance, first, run_id):
        raise RetryRequested(max_retries=wait.grace_retries, seconds_to_wait=wait.seconds) from Failure(
            f"{not_materialised}; no run of it started"
        )
    raise Failure(not_materialised, allow_retries=False)


def own_earlier_partitions(
    table: str,
    partition_key: str,
    instance: DagsterInstance,
    run_id: str,
    uri_of: Callable[[str], str],
    exists: Callable[[str], bool],
    wait: HistoryWait,
) -> dict[str, str]:
    """A step's own table in every earlier batch (dedup and SCD2 read their own past).

    Dagster allows self-dependencies only on time-window partitions, so this read is declared
    through the raw history it derives from (see assets/clean.py) and recorded as metadata.
    """
    keys = [key for key in registered_batches(instance) if key < partition_key]
    uris = {key: uri_of(key) for key in keys}
    require_complete(table, partition_key, keys, lambda key: exists(uris[key]), instance, run_id, wait)
    return uris


def latest_earlier_partition(
    table: str,
    partition_key: str,
    instance: DagsterInstance,
    run_id: str,
    uri_of: Callable[[str], str],
    exists: Callable[[str], bool],
    wait: HistoryWait,
) -> tuple[str, str] | None:
    """The latest earlier batch that stores `table`, and its URI (None: no earlier batch has it).

    A model step reads its own latest earlier model (the retrain policy keeps it or not). Batches
    without it are skipped (run only through an earlier zone), except one whose run is still in
    flight: the step waits for it, so runs of adjacent batches decide as they would in date order.
    """
    for key in reversed([key for key in registered_batches(instance) if key < partition_key]):
        uri = uri_of(key)
        if exists(uri):
            return key, uri
        if batch_in_flight(instance, key, run_id):
            raise RetryRequested(max_retries=wait.retries, seconds_to_wait=wait.seconds) from Failure(
                f"{table}: the run of earlier batch {key} did not store it in time; batch {partition_key} "
                "decides whether to keep the latest earlier model"
            )
    return None
