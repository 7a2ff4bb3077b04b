"""Builds the Dagster Definitions for an environment (local folders or AWS)."""

from __future__ import annotations

from dagster import AssetSelection, AssetSpec, Definitions, define_asset_job

from instarec_assets.assets.checks import clean_checks
from instarec_assets.assets.clean import CLEAN_STEPS
from instarec_assets.assets.consumption import (
    dynamodb_recommendations,
    next_basket,
    recommendations,
    reorder_predictions,
    similar_items,
)
from instarec_assets.assets.curated import curated_features_step
from instarec_assets.assets.graph import graphsage_step
from instarec_assets.assets.models import xgboost_model
from instarec_assets.assets.raw import raw_landing_files
from instarec_assets.assets.warehouse import (
    WAREHOUSE_RESOURCE_KEY,
    analyst_warehouse,
    warehouse_duckdb_resource,
)
from instarec_assets.backends.serving_store import store_settings_from_env
from instarec_assets.history import DEFAULT_HISTORY_WAIT, HistoryWait
from instarec_assets.io_managers import LakeIOManager, ModelArtifactIOManager
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.schemas import ZONES
from instarec_assets.partitions import landing_batches
from instarec_assets.resources import (
    ComputeResource,
    LakeResource,
    ModelTrainingResource,
    RetrainPolicyResource,
    ServingStoreResource,
    duckdb_resource,
)
from instarec_assets.sensors import LANDING_JOB_NAME, landing_sensor
from instarec_assets.settings import Settings

ASSETS = [
    raw_landing_files,
    *CLEAN_STEPS,
    curated_features_step,
    graphsage_step,
    xgboost_model,
    reorder_predictions,
    next_basket,
    recommendations,
    similar_items,
    dynamodb_recommendations,
    analyst_warehouse,
]

# The assets are written for local mode; in aws mode the same assets store to S3 and serve from DynamoDB.
AWS_KINDS = {"parquet": "s3", "sqlite": "dynamodb"}


def build_resources(locations: LakeLocations, history_wait: HistoryWait = DEFAULT_HISTORY_WAIT) -> dict:
    """The lake, DuckDB and one parquet IO manager per zone, all pointing at `locations`."""
    lake = LakeResource.from_locations(locations, history_wait)
    settings = Settings.from_env()
    default_backend = "sagemaker" if locations.is_aws else "local"
    return {
        "lake": lake,
        "duckdb": duckdb_resource(locations, settings.threads, settings.duckdb_memory_limit),
        WAREHOUSE_RESOURCE_KEY: warehouse_duckdb_resource(locations),
        **{f"{zone}_io_manager": LakeIOManager(lake=lake, zone=zone) for zone in ZONES},
        "model_io_manager": ModelArtifactIOManager(lake=lake),
        "training": ModelTrainingResource(backend=settings.training_backend or default_backend),
        "compute": ComputeResource(
            threads=settings.threads,
            graphsage_device=settings.graphsage_device,
        ),
        "serving_store": ServingStoreResource(**store_settings_from_env(locations.home)),
        "retrain_policy": RetrainPolicyResource(
            every_batches=settings.retrain_every_batches,
            max_age_days=settings.retrain_max_age_days,
            drift_threshold=settings.retrain_drift_psi,
        ),
    }


def _aws_kinds(spec: AssetSpec) -> AssetSpec:
    return spec.replace_attributes(kinds={AWS_KINDS.get(kind, kind) for kind in spec.kinds})


def build_definitions(
    locations: LakeLocations, history_wait: HistoryWait = DEFAULT_HISTORY_WAIT
) -> Definitions:
    landing_job = define_asset_job(
        LANDING_JOB_NAME,
        selection=AssetSelection.all(),
        partitions_def=landing_batches,
        description="Every asset for one landing batch: raw, clean, and everything downstream.",
    )
    definitions = Definitions(
        assets=ASSETS,
        asset_checks=clean_checks(),
        jobs=[landing_job],
        sensors=[landing_sensor],
        resources=build_resources(locations, history_wait),
    )
    return definitions.map_asset_specs(func=_aws_kinds) if locations.is_aws else definitions
