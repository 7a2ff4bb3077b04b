"""Builds the Dagster Definitions for an environment (local folders or AWS)."""

from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path

from dagster import (
    AssetSelection,
    AssetSpec,
    Definitions,
    PreviewWarning,
    define_asset_job,
    multiprocess_executor,
)

from instarec_assets.alerts import run_failure_alert
from instarec_assets.assets.checks import clean_checks
from instarec_assets.assets.clean import CLEAN_STEPS
from instarec_assets.assets.consumption import (
    dynamodb_recommendations,
    next_basket,
    ranking_report,
    recommendations,
    reorder_predictions,
    similar_items,
)
from instarec_assets.assets.curated import curated_features_step
from instarec_assets.assets.graph import graphsage_step
from instarec_assets.assets.models import xgboost_model
from instarec_assets.assets.privacy import forget_shopper
from instarec_assets.assets.raw import raw_landing_files
from instarec_assets.assets.warehouse import (
    WAREHOUSE_RESOURCE_KEY,
    analyst_masked_tables,
    analyst_warehouse,
    warehouse_duckdb_resource,
)
from instarec_assets.backends.serving_store import store_settings_from_env
from instarec_assets.history import DEFAULT_HISTORY_WAIT, HistoryWait
from instarec_assets.io_managers import LakeIOManager, ModelArtifactIOManager
from instarec_assets.lake.emr_serverless import EmrServerlessSettings
from instarec_assets.lake.locations import LakeConfigError, LakeLocations
from instarec_assets.lake.schemas import ZONES
from instarec_assets.partitions import landing_batches
from instarec_assets.resources import (
    AnalystCatalogResource,
    ComputeResource,
    EmrServerlessResource,
    ForgetListResource,
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
    ranking_report,
    similar_items,
    dynamodb_recommendations,
    analyst_warehouse,
]

# The assets are written for local mode; in aws mode the same assets store to S3 and serve from DynamoDB.
AWS_KINDS = {"parquet": "s3", "sqlite": "dynamodb"}


def build_resources(
    locations: LakeLocations, history_wait: HistoryWait = DEFAULT_HISTORY_WAIT, engine: str | None = None
) -> dict:
    """The lake, DuckDB and one parquet IO manager per zone, all pointing at `locations`; `engine`
    overrides INSTAREC_ENGINE (`instarec materialize --engine`)."""
    settings = Settings.from_env()
    lake = LakeResource.from_locations(
        locations, history_wait, feature_max_delta_chain=settings.feature_max_delta_chain
    )
    if locations.is_aws and (engine or settings.engine) == "spark":
        EmrServerlessSettings.from_settings(settings)  # a missing INSTAREC_EMR_* fails here, named
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
            engine=engine or settings.engine,
        ),
        "serving_store": ServingStoreResource(
            **store_settings_from_env(locations.home), max_delta_chain=settings.serving_max_delta_chain
        ),
        "analyst_catalog": AnalystCatalogResource(
            bucket=settings.analyst_bucket, database=settings.analyst_database
        ),
        "emr_serverless": EmrServerlessResource(
            application_id=settings.emr_application_id,
            job_role_arn=settings.emr_job_role_arn,
            artifacts_uri=settings.emr_artifacts_uri,
            logs_uri=settings.emr_logs_uri,
            log_group=settings.emr_log_group,
            staging_uri=settings.emr_staging_uri,
            region=settings.region,
            endpoint_url=settings.endpoint_url,
        ),
        "forget_list": ForgetListResource(lake=lake),
        "retrain_policy": RetrainPolicyResource(
            every_batches=settings.retrain_every_batches,
            max_age_days=settings.retrain_max_age_days,
            drift_threshold=settings.retrain_drift_psi,
        ),
    }


# Who answers for each group's assets, and the tags to filter by in the UI (`zone:` and `layer:`),
# applied here to every asset of the group so that an asset added to a group gets them too.
GROUP_OWNERS = {
    "raw": "team:data-platform",
    "clean": "team:data-platform",
    "curated": "team:data-platform",
    "models": "team:ml",
    "consumption": "team:ml",
}
GROUP_LAYERS = {
    "raw": "lake",
    "clean": "lake",
    "curated": "lake",
    "models": "ml",
    "consumption": "serving",
}
# Owner and layer of an asset in a group that the tables above do not name yet.
DEFAULT_OWNER = "team:data-platform"
DEFAULT_LAYER = "lake"


# The logic packages whose code decides each group's output. An asset's code_version is a hash of
# their source (and SQL), so Dagster shows "code version changed" on assets materialised by older
# logic, and never misses a change that a hand-bumped version string would.
GROUP_LOGIC = {
    "raw": ("lake",),
    "clean": ("lake",),
    "curated": ("lake", "features"),
    "models": ("features", "ml", "backends"),
    "consumption": ("ml", "consumption", "backends", "warehouse"),
}


def source_digest(root: Path, packages: tuple[str, ...]) -> str:
    """12 hex digits of the sha256 of the packages' .py and .sql files under root, by relative path."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted(p for p in (root / package).rglob("*") if p.suffix in {".py", ".sql"}):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@functools.cache
def logic_version(group: str) -> str | None:
    """The code_version of a group's assets (None for a group without logic packages)."""
    packages = GROUP_LOGIC.get(group)
    return source_digest(Path(__file__).resolve().parent, packages) if packages else None


def owned_and_tagged(spec: AssetSpec) -> AssetSpec:
    """The spec with its group's owner, `zone`/`layer` tags and logic version added (its own kept)."""
    group = spec.group_name or "default"
    owners = spec.owners or [GROUP_OWNERS.get(group, DEFAULT_OWNER)]
    tags = {"zone": group, "layer": GROUP_LAYERS.get(group, DEFAULT_LAYER), **spec.tags}
    code_version = spec.code_version or logic_version(group)
    return spec.replace_attributes(owners=owners, tags=tags, code_version=code_version)


def _aws_kinds(spec: AssetSpec) -> AssetSpec:
    return spec.replace_attributes(kinds={AWS_KINDS.get(kind, kind) for kind in spec.kinds})


# A run started from the UI (a job or the asset graph's Materialize) or by a sensor runs each step in a
# child process. Spawned children import the pipeline (torch, XGBoost, DuckDB, Dagster) once per
# step; children forked from a server that imported it once do not (bench/bench_run_paths.py). The
# CLI runs the job in-process and needs none of this.
STEP_EXECUTOR = multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["instarec_assets.definitions"]}}},
    name="multiprocess_preloaded",
)

# The stage jobs: what one stage rebuilds for a batch, beside the full landing job (group names).
STAGE_JOBS = {
    "ingest": (("raw", "clean"), "The lake's raw and clean zones for one landing batch."),
    "features": (("curated",), "The curated features and the training and inference sets for one batch."),
    "models": (("models",), "GraphSAGE and XGBoost for one batch (trained or kept by the retrain policy)."),
    "serve": (
        ("consumption",),
        "Predictions, baskets, recommendations, similar items, the serving load and the warehouse.",
    ),
}


def landing_jobs() -> list:
    """The full landing job and one job per stage (a stage reruns only its zone for a batch)."""
    jobs = [
        define_asset_job(
            LANDING_JOB_NAME,
            selection=AssetSelection.all(),
            partitions_def=landing_batches,
            description="Every asset for one landing batch: raw, clean, and everything downstream.",
        )
    ]
    for stage, (groups, description) in STAGE_JOBS.items():
        jobs.append(
            define_asset_job(
                f"{stage}_stage",
                selection=AssetSelection.groups(*groups),
                partitions_def=landing_batches,
                description=description,
            )
        )
    return jobs


def environment_assets(locations: LakeLocations) -> list:
    """ASSETS; in aws mode with INSTAREC_ANALYST_BUCKET set, the analysts' masked tables on S3 and Glue
    in place of the local warehouse file (a run task's /tmp copy would be built and lost each batch)."""
    settings = Settings.from_env()
    if not (locations.is_aws and settings.analyst_bucket):
        return list(ASSETS)
    if not settings.analyst_database:
        raise LakeConfigError("INSTAREC_ANALYST_DATABASE must be set when INSTAREC_ANALYST_BUCKET is")
    return [analyst_masked_tables if asset is analyst_warehouse else asset for asset in ASSETS]


def build_definitions(
    locations: LakeLocations, history_wait: HistoryWait = DEFAULT_HISTORY_WAIT, engine: str | None = None
) -> Definitions:
    definitions = Definitions(
        assets=environment_assets(locations),
        asset_checks=clean_checks(),
        jobs=[*landing_jobs(), forget_shopper],
        executor=STEP_EXECUTOR,
        sensors=[landing_sensor, run_failure_alert],
        resources=build_resources(locations, history_wait, engine),
    )
    specs = (lambda spec: _aws_kinds(owned_and_tagged(spec))) if locations.is_aws else owned_and_tagged
    with warnings.catch_warnings():  # map_asset_specs is a preview API: stable for what is used here
        warnings.simplefilter("ignore", PreviewWarning)
        return definitions.map_asset_specs(func=specs)
