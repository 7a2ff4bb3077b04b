"""The retrain policy in the model steps: the latest earlier model of a step, and the metadata of
the decision (the logic is instarec_assets.ml.retrain)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, MetadataValue

from instarec_assets.history import latest_earlier_partition, registered_batches
from instarec_assets.io_managers import local_model_folder
from instarec_assets.ml.metrics import table_markdown
from instarec_assets.ml.retrain import RetrainDecision
from instarec_assets.resources import LakeResource


def previous_model(
    context: AssetExecutionContext, lake: LakeResource, asset: str, commit_file: str
) -> tuple[str, Path] | None:
    """(batch, local folder) of the latest earlier complete partition of a model asset (its commit
    file is written last), downloaded to scratch in aws mode; None when no earlier batch has one.
    Its batch's run still in flight is waited for (instarec_assets.history)."""
    locations = lake.locations
    locations.filesystem.invalidate_cache()
    found = latest_earlier_partition(
        asset,
        context.partition_key,
        context.instance,
        context.run_id,
        lambda key: locations.model_uri(asset, key),
        lambda uri: locations.filesystem.exists(f"{uri}/{commit_file}"),
        lake.history_wait,
    )
    if found is None:
        return None
    batch, _ = found
    return batch, local_model_folder(locations, asset, batch)


def batches_since(context: AssetExecutionContext):
    """A counter of the registered batches after a fitting batch, up to and including this run's."""
    batches = registered_batches(context.instance)
    partition = context.partition_key
    return lambda trained_on: sum(1 for key in batches if trained_on < key <= partition)


def decision_metadata(decision: RetrainDecision, drift_name: str, previous_batch: str | None) -> dict:
    """What the UI shows of a retrain decision, on the model asset."""
    top = decision.drift_detail.get("top") or []
    drift = decision.as_dict()["drift"]
    metadata = {
        "retrained": MetadataValue.bool(decision.retrain),
        "retrain_reason": MetadataValue.text(decision.reason),
        "retrain_policy": MetadataValue.text(decision.policy),
        "trained_on_batch": MetadataValue.text(decision.trained_on_batch or ""),
        "previous_model_batch": MetadataValue.text(previous_batch or "none"),
        "batches_since_training": MetadataValue.int(decision.batches_since),
        "days_since_training": MetadataValue.int(decision.age_days),
        drift_name: MetadataValue.float(drift) if drift is not None else MetadataValue.text("not measured"),
        "drift_detail": MetadataValue.json(decision.drift_detail),
    }
    if top:
        metadata["top_drifting_features"] = MetadataValue.md(table_markdown(pd.DataFrame(top)))
    return metadata
