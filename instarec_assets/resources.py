"""Resources for each environment: where the lake lives (local folders or S3) and the DuckDB engine."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb as duckdb_module
from dagster import ConfigurableResource, InitResourceContext
from dagster_duckdb import DuckDBResource
from pydantic import PrivateAttr

from instarec_assets.completeness import reclaim_scratch
from instarec_assets.compute import thread_count
from instarec_assets.history import DEFAULT_HISTORY_WAIT, HistoryWait
from instarec_assets.lake.clean_orders import ForgetList
from instarec_assets.lake.duck import attach_filesystem
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.retrain import RetrainPolicy


class LakeResource(ConfigurableResource):
    """The lake's locations as Dagster configuration; logic functions get plain URIs from it."""

    env: str = "local"
    home: str = ".instarec"
    raw_bucket: str = ""
    clean_bucket: str = ""
    curated_bucket: str = ""
    consumption_bucket: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"
    s3_timeout_s: float = 60.0
    # A step reading history waits this long, this many times, for an earlier batch whose run is in
    # flight (see instarec_assets.history).
    history_wait_seconds: float = HistoryWait.seconds
    history_wait_retries: int = HistoryWait.retries
    history_grace_retries: int = HistoryWait.grace_retries
    # Feature-table deltas stacked on a base (INSTAREC_FEATURE_MAX_DELTA_CHAIN); the batch after writes
    # whole tables again (lake/feature_delta.py). 0: whole tables every batch.
    feature_max_delta_chain: int = 8

    @classmethod
    def from_locations(
        cls,
        locations: LakeLocations,
        history_wait: HistoryWait = DEFAULT_HISTORY_WAIT,
        feature_max_delta_chain: int = 8,
    ) -> LakeResource:
        return cls(
            feature_max_delta_chain=feature_max_delta_chain,
            history_wait_seconds=history_wait.seconds,
            history_wait_retries=history_wait.retries,
            history_grace_retries=history_wait.grace_retries,
            env=locations.env,
            home=locations.home,
            raw_bucket=locations.raw_bucket,
            clean_bucket=locations.clean_bucket,
            curated_bucket=locations.curated_bucket,
            consumption_bucket=locations.consumption_bucket,
            endpoint_url=locations.endpoint_url,
            region=locations.region,
            s3_timeout_s=locations.s3_timeout_s,
        )

    # The staging folders (and s3:// staging prefixes, the Spark job's on EMR) this step (or
    # in-process run) made, removed when it ends.
    _staged: list[Path] = PrivateAttr(default_factory=list)
    _staged_prefixes: list[str] = PrivateAttr(default_factory=list)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Reclaim the staging space that killed runs left behind, before this run stages its own."""
        if context.instance is not None:
            reclaim_scratch(context.instance, self.locations.scratch_dir())

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        for path in self._staged:
            shutil.rmtree(path, ignore_errors=True)
        for prefix in self._staged_prefixes:
            with contextlib.suppress(FileNotFoundError):
                self.locations.filesystem.rm(prefix, recursive=True)

    @property
    def locations(self) -> LakeLocations:
        return _locations(
            self.env,
            self.home,
            self.raw_bucket,
            self.clean_bucket,
            self.curated_bucket,
            self.consumption_bucket,
            self.endpoint_url,
            self.region,
            self.s3_timeout_s,
        )

    def staging_dir(self, run_id: str, label: str) -> Path:
        """A local folder for one step's files; the IO manager moves them into the lake from there."""
        path = self.locations.scratch_dir() / f"{run_id}-{label}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        self._staged.append(path)
        return path

    def staging_prefix(self, uri: str) -> str:
        """An s3:// prefix a remote job stages one step's files in, emptied first and removed when
        the step ends (what publishing leaves: the request and result files)."""
        fs = self.locations.filesystem
        if fs.exists(uri):
            fs.rm(uri, recursive=True)
        self._staged_prefixes.append(uri)
        return uri

    @property
    def history_wait(self) -> HistoryWait:
        return HistoryWait(self.history_wait_seconds, self.history_wait_retries, self.history_grace_retries)

    @staticmethod
    def now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)


_LOCATIONS_CACHE: dict[tuple, LakeLocations] = {}


def _locations(*settings: str | float) -> LakeLocations:
    """One LakeLocations (and so one fsspec filesystem) per distinct configuration."""
    if settings not in _LOCATIONS_CACHE:
        _LOCATIONS_CACHE[settings] = LakeLocations(*settings)
    return _LOCATIONS_CACHE[settings]


def duckdb_resource(locations: LakeLocations, threads: int = 0, memory_limit: str = "4GB") -> DuckDBResource:
    """In-memory DuckDB that spills to the lake's scratch folder and never downloads extensions;
    `threads` as ComputeResource.threads (0 = the CPUs this process may use)."""
    return DuckDBResource(
        database=":memory:",
        connection_config={
            "threads": thread_count(threads),
            "memory_limit": memory_limit,
            "temp_directory": str(locations.home_path / "tmp" / "duckdb"),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        },
    )


@contextmanager
def lake_connection(duckdb: DuckDBResource, lake: LakeResource) -> Iterator[duckdb_module.DuckDBPyConnection]:
    """A DuckDB connection that can also read and write the lake's `s3://` URIs."""
    with duckdb.get_connection() as conn:
        attach_filesystem(conn, lake.locations.filesystem)
        yield conn


class ModelTrainingResource(ConfigurableResource):
    """Where the reorder model trains and scores: `local` (in-process) or `sagemaker` (a training job,
    then batch transform jobs)."""

    backend: str = "local"

    @property
    def uses_sagemaker(self) -> bool:
        from instarec_assets.backends.model_backend import check_backend

        return check_backend(self.backend) == "sagemaker"

    def sagemaker_client(self):
        """One client per use, settings from the environment; tests override this to act as the container."""
        from instarec_assets.backends.model_backend import sagemaker_client

        return sagemaker_client()

    def trainer(self):
        from instarec_assets.backends.model_backend import build_trainer

        return build_trainer(self.backend, self.sagemaker_client() if self.uses_sagemaker else None)


class ServingStoreResource(ConfigurableResource):
    """The recommendations serving store: a SQLite file locally, a DynamoDB table in aws mode."""

    kind: str = "sqlite"
    sqlite_path: str = ""
    dynamodb_table: str = ""
    region: str = "us-east-1"
    endpoint_url: str = ""
    # Delta versions stacked on a full one (INSTAREC_SERVING_MAX_DELTA_CHAIN); reorder_predictions
    # scores a batch in full before its chain would pass it.
    max_delta_chain: int = 8

    def open(self, read_only: bool = False):
        from instarec_assets.backends.serving_store import open_store

        return open_store(
            self.kind,
            self.sqlite_path,
            self.dynamodb_table,
            self.region,
            self.endpoint_url,
            read_only=read_only,
            max_delta_chain=self.max_delta_chain,
        )


class ComputeResource(ConfigurableResource):
    """How much of the machine the model steps use, and where GraphSAGE runs."""

    # Threads for XGBoost, torch and DuckDB; 0 = the CPUs this process may use (affinity and cgroup
    # quota, as on ECS), not os.cpu_count(): oversubscribed OpenMP threads cost more than they gain.
    threads: int = 0
    # cpu, cuda or "" (cuda when available, else cpu).
    graphsage_device: str = ""
    # Where the clean steps and the feature build run: duckdb (in process) or spark (a Pipes job,
    # lake/spark_connection.py; the feature tables are then written whole each batch, never as deltas).
    engine: str = "duckdb"


class EmrServerlessResource(ConfigurableResource):
    """Where the Spark engine's jobs (the clean steps, the feature build) run in aws mode: the spark
    stack's EMR Serverless application, its job role, and the S3 folders of the jobs' code, logs and
    staged outputs (INSTAREC_EMR_*; see lake/emr_serverless.py). Unused on DuckDB and in local mode."""

    application_id: str = ""
    job_role_arn: str = ""
    artifacts_uri: str = ""
    logs_uri: str = ""
    log_group: str = ""
    staging_uri: str = ""
    region: str = "us-east-1"
    endpoint_url: str = ""
    # How often the client asks for the job run's state (a job runs for minutes).
    poll_interval_s: float = 10.0

    def settings(self):
        """The validated settings; a missing or malformed one is named by its variable."""
        from instarec_assets.lake.emr_serverless import EmrServerlessSettings

        return EmrServerlessSettings.from_values(
            self.application_id,
            self.job_role_arn,
            self.artifacts_uri,
            self.logs_uri,
            self.log_group,
            self.staging_uri,
        )

    def _client(self, service: str):
        import boto3

        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint_url or None)

    def emr_client(self):
        return self._client("emr-serverless")

    def pipes_client(self, emr_client):
        """dagster-aws's client on `emr_client`, reading the driver's Pipes messages from CloudWatch."""
        from dagster_aws.pipes import PipesCloudWatchMessageReader, PipesEMRServerlessClient

        return PipesEMRServerlessClient(
            client=emr_client,
            message_reader=PipesCloudWatchMessageReader(client=self._client("logs")),
            poll_interval=self.poll_interval_s,
        )


class RetrainPolicyResource(ConfigurableResource):
    """When xgboost_model and graphsage_step refit rather than keep the active model (see
    instarec_assets.ml.retrain); 0 turns a rule off."""

    every_batches: int = RetrainPolicy.every_batches
    max_age_days: int = RetrainPolicy.max_age_days
    # The largest per-feature PSI (XGBoost) or the share of new graph edges (GraphSAGE).
    drift_threshold: float = RetrainPolicy.drift_threshold

    @property
    def policy(self) -> RetrainPolicy:
        return RetrainPolicy(self.every_batches, self.max_age_days, self.drift_threshold)


class AnalystCatalogResource(ConfigurableResource):
    """Where the analysts' masked tables go in aws mode: their bucket and the Glue database over it."""

    bucket: str = ""
    database: str = ""


class ForgetListResource(ConfigurableResource):
    """The forget list the clean step reads: users whose forget request is in force (the audit log
    under `<raw zone>/privacy/`, instarec_assets.privacy), as salted hashes with their salt."""

    lake: LakeResource

    def load(self) -> ForgetList:
        """Empty when no request was ever made (the salt is then not even read)."""
        from instarec_assets.privacy.requests import forgotten_hashes, read_records
        from instarec_assets.warehouse.salt import load_salt

        locations = self.lake.locations
        hashes = forgotten_hashes(read_records(locations))
        if not hashes:
            return ForgetList()
        return ForgetList(salt=load_salt(locations.home_path).value, user_hashes=hashes)
