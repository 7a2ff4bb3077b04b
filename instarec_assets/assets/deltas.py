"""Delta batches in the consumption assets: reorder_predictions' full-or-delta decision, read back
by the assets downstream from its materialisation, and the partition chains they resolve (the logic
is instarec_assets.consumption.deltas)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any as AnyValue

from dagster import (
    AllPartitionMapping,
    Any,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    Failure,
)

from instarec_assets.consumption.deltas import DELTA, FULL, PartitionRecord
from instarec_assets.history import registered_batches

PREDICTIONS = "reorder_predictions"
NEXT_BASKET = "next_basket"


def chain_input(key: str) -> AssetIn:
    """An input of every stored partition of `key` ({batch: URI}), declared on all partitions
    (AllPartitionMapping, as history_input) for an asset that reads a chain of delta partitions. Unlike
    history_input, a batch without the partition is skipped: a chain reaches back only to its newest
    full partition, so batches materialised only through earlier zones do not stop it."""
    return AssetIn(
        key=key,
        partition_mapping=AllPartitionMapping(),
        metadata={"allow_missing_partitions": True},
        # the IO manager hands one URI, not a dict, when a single batch is registered
        dagster_type=Any,
    )


def latest_metadata(instance: DagsterInstance, asset: str, batch: str) -> dict[str, AnyValue] | None:
    """The metadata values of the latest materialisation of one partition of an asset; None if none."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[batch]), limit=1
    ).records
    if not records:
        return None
    return {name: value.value for name, value in records[0].asset_materialization.metadata.items()}


def prediction_record(instance: DagsterInstance, batch: str) -> PartitionRecord | None:
    """What reorder_predictions of `batch` recorded (a partition from before delta batches is full)."""
    metadata = latest_metadata(instance, PREDICTIONS, batch)
    if metadata is None:
        return None
    return PartitionRecord(
        batch=batch,
        mode=str(metadata.get("mode", FULL)),
        xgboost_version=metadata.get("model_version"),
        graphsage_version=metadata.get("graphsage_model_version"),
    )


def base_history(
    context: AssetExecutionContext,
) -> tuple[str | None, PartitionRecord | None, list[PartitionRecord]]:
    """(the registered batch before this one, its predictions partition or None, the partitions its
    delta chain follows back to the newest full one, oldest first). A previous batch whose
    recommendations were not materialised is no base: a delta on it could not be served."""
    instance = context.instance
    earlier = [key for key in registered_batches(instance) if key < context.partition_key]
    if not earlier:
        return None, None, []
    previous = earlier[-1]
    base = prediction_record(instance, previous)
    if base is None or latest_metadata(instance, "recommendations", previous) is None:
        return previous, None, []
    chain: list[PartitionRecord] = []
    record = base
    while record.mode == DELTA:
        metadata = latest_metadata(instance, PREDICTIONS, record.batch) or {}
        found = prediction_record(instance, str(metadata.get("delta_base", "")))
        if found is None:
            break
        chain.insert(0, found)
        record = found
    return previous, base, chain


def consumption_mode(context: AssetExecutionContext) -> tuple[str, str | None]:
    """(mode, delta base) that reorder_predictions decided for this batch, read from its
    materialisation: the assets downstream follow it, never deciding again."""
    metadata = latest_metadata(context.instance, PREDICTIONS, context.partition_key)
    if metadata is None or "mode" not in metadata:
        raise Failure(
            f"reorder_predictions of batch {context.partition_key} recorded no full/delta mode; "
            "materialise it first",
            allow_retries=False,
        )
    base = metadata.get("delta_base")
    return str(metadata["mode"]), str(base) if base and base != "none" else None


def partition_chain(
    context: AssetExecutionContext, asset: str, uris: dict[str, str] | str
) -> list[tuple[str, str]]:
    """[(batch, URI)] of `asset` from its newest full partition up to this batch's, oldest first,
    following each delta partition's recorded `delta_base`. `uris` is a chain_input's value."""
    if isinstance(uris, str):
        uris = {context.partition_key: uris}
    chain: list[tuple[str, str]] = []
    batch: str | None = context.partition_key
    while batch is not None:
        if batch not in uris:
            raise Failure(
                f"{asset}: batch {batch} of the delta chain of {context.partition_key} is not stored; "
                "rerun with full_rescore: true on reorder_predictions",
                allow_retries=False,
            )
        chain.insert(0, (batch, uris[batch]))
        metadata = latest_metadata(context.instance, asset, batch) or {}
        base = metadata.get("delta_base")
        batch = str(base) if metadata.get("mode") == DELTA and base and base != "none" else None
    return chain


@dataclass(frozen=True)
class BasketCarry:
    """Whether next_basket carries the previous batch's baskets (`previous` and its `uri`) or selects
    every test order again (`previous` None), and why."""

    previous: str | None
    uri: str | None
    reason: str


def basket_carry(
    instance: DagsterInstance,
    chain: list[tuple[str, str]],
    none_fingerprint: str,
    uri_of: Callable[[str], str],
    exists: Callable[[str], bool],
) -> BasketCarry:
    """next_basket's own previous partition can be carried when it was selected from this chain less
    its newest partition, with the same P(None) calibration, and nothing it read (the chain's
    predictions, the clean orders up to its batch) was materialised again after it."""

    def full(reason: str) -> BasketCarry:
        return BasketCarry(None, None, reason)

    if len(chain) < 2:
        return full("the predictions are a full partition: every test order is selected")
    previous = chain[-2][0]
    previous_chain = [batch for batch, _ in chain[:-1]]
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(NEXT_BASKET), asset_partitions=[previous]), limit=1
    ).records
    if not records:
        return full(f"batch {previous} has no baskets to carry")
    record = records[0]
    metadata = {name: value.value for name, value in record.asset_materialization.metadata.items()}
    if metadata.get("predictions_chain") != previous_chain:
        return full(f"the baskets of {previous} were selected from another predictions chain")
    if metadata.get("none_probability_fingerprint") != none_fingerprint:
        return full(f"the P(None) calibration differs from the one the baskets of {previous} used")
    read_by_previous = (
        (PREDICTIONS, previous_chain),
        ("clean_orders", [key for key in registered_batches(instance) if key <= previous]),
    )
    for asset, partitions in read_by_previous:
        later = instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=AssetKey(asset), asset_partitions=partitions, after_storage_id=record.storage_id
            ),
            limit=1,
        ).records
        if later:
            return full(
                f"{asset} of {later[0].partition_key} was materialised after the baskets of {previous}"
            )
    uri = uri_of(previous)
    if not exists(uri):
        return full(f"the baskets of {previous} are not stored")
    return BasketCarry(
        previous,
        uri,
        f"carried from {previous}: only users with an order in this batch or re-scored rows are selected again",
    )
