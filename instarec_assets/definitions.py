"""Builds the Dagster Definitions for an environment (local folders or AWS)."""

from __future__ import annotations

import os

from dagster import AssetSelection, Definitions, define_asset_job

from instarec_assets.assets.checks import clean_checks
from instarec_assets.assets.clean import clean_assets
from instarec_assets.assets.consumption import consumption_assets
from instarec_assets.assets.curated import curated_assets
from instarec_assets.assets.graph import graph_assets
from instarec_assets.assets.models import model_assets
from instarec_assets.assets.raw import raw_assets
from instarec_assets.assets.warehouse import (
    WAREHOUSE_RESOURCE_KEY,
    warehouse_assets,
    warehouse_duckdb_resource,
)
from instarec_assets.backends.serving_store import store_settings_from_env
from instarec_assets.io_managers import LakeIOManager, ModelArtifactIOManager
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.schemas import ZONES
from instarec_assets.partitions import landing_date_partitions
from instarec_assets.resources import (
    LakeResource,
    ModelTrainingResource,
    ServingStoreResource,
    duckdb_resource,
)
from instarec_assets.sensors import LANDING_JOB_NAME, landing_sensor


def build_resources(locations: LakeLocations) -> dict:
    """The lake, DuckDB and one parquet IO manager per zone, all pointing at `locations`."""
    lake = LakeResource.from_locations(locations)
    default_backend = "sagemaker" if locations.is_aws else "local"
    return {
        "lake": lake,
        "duckdb": duckdb_resource(locations),
        WAREHOUSE_RESOURCE_KEY: warehouse_duckdb_resource(locations),
        **{f"{zone}_io_manager": LakeIOManager(lake=lake, zone=zone) for zone in ZONES},
        "model_io_manager": ModelArtifactIOManager(lake=lake),
        "training": ModelTrainingResource(
            backend=os.environ.get("INSTAREC_TRAINING_BACKEND", default_backend)
        ),
        "serving_store": ServingStoreResource(**store_settings_from_env(locations.home)),
    }


def build_definitions(locations: LakeLocations) -> Definitions:
    storage_kind = "s3" if locations.is_aws else "parquet"
    kinds = {"duckdb", storage_kind}
    store_kind = "dynamodb" if locations.is_aws else "sqlite"
    assets = [
        *raw_assets(kinds),
        *clean_assets(kinds),
        *curated_assets(kinds),
        *graph_assets(storage_kind),
        *model_assets(storage_kind),
        *consumption_assets(storage_kind, store_kind),
        *warehouse_assets(),
    ]
    landing_job = define_asset_job(
        LANDING_JOB_NAME,
        selection=AssetSelection.all(),
        partitions_def=landing_date_partitions,
        description="Every asset for one landing date: raw, clean, and everything downstream.",
    )
    return Definitions(
        assets=assets,
        asset_checks=clean_checks(),
        jobs=[landing_job],
        sensors=[landing_sensor],
        resources=build_resources(locations),
    )
