"""Every environment variable the pipeline, the CLI and the backends read, in one place.

The Dagster resources are configured from these in definitions.build_resources; logic modules take
plain arguments. (The serving Lambda and `instarec serve` read theirs in serving/settings.py, which
ships without the pipeline.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# variable -> what it sets; the README's "Settings" table is this list.
VARIABLES: dict[str, str] = {
    "INSTAREC_ENV": "local (default) or aws",
    "INSTAREC_HOME": "the local home: landing, lake, Dagster instance, warehouse, serving store (default ./.instarec)",
    "INSTAREC_RAW_BUCKET": "aws: the raw zone's bucket (landing/ prefix included)",
    "INSTAREC_CLEAN_BUCKET": "aws: the clean zone's bucket",
    "INSTAREC_CURATED_BUCKET": "aws: the curated zone's bucket (features, models)",
    "INSTAREC_CONSUMPTION_BUCKET": "aws: the consumption zone's bucket",
    "INSTAREC_AWS_ENDPOINT_URL": "an S3/DynamoDB/SageMaker endpoint (moto in tests, a private endpoint)",
    "INSTAREC_S3_TIMEOUT_S": "aws: S3 connect and read timeout in seconds, per try; s3fs tries a call 5 times (default 60)",
    "AWS_REGION": "the AWS region (else AWS_DEFAULT_REGION, else us-east-1)",
    "INSTAREC_THREADS": "threads for XGBoost, torch and DuckDB (default 0: the CPUs this process may use)",
    "INSTAREC_DUCKDB_MEMORY_LIMIT": "DuckDB's memory limit per connection (default 4GB)",
    "INSTAREC_TRAINING_BACKEND": "local or sagemaker (default: sagemaker in aws mode, else local)",
    "INSTAREC_GRAPHSAGE_DEVICE": "cpu or cuda (default: cuda when available)",
    "INSTAREC_DYNAMODB_TABLE": "aws: the serving table",
    "INSTAREC_SERVING_KEEP_VERSIONS": "loaded serving versions kept for rollback (default 3)",
    "INSTAREC_SERVING_MAX_DELTA_CHAIN": "delta serving versions stacked on a full one before a full load is required (default 8)",
    "INSTAREC_FEATURE_MAX_DELTA_CHAIN": "feature-table deltas stacked on a base before a batch writes whole tables again (default 8; 0: whole tables every batch)",
    "INSTAREC_SAGEMAKER_ROLE_ARN": "aws: the SageMaker execution role",
    "INSTAREC_SAGEMAKER_SUBNETS": "aws: comma-separated subnets for SageMaker jobs",
    "INSTAREC_SAGEMAKER_SECURITY_GROUPS": "aws: comma-separated security groups for SageMaker jobs",
    "INSTAREC_KMS_KEY_ARN": "aws: the KMS key for SageMaker job outputs",
    "INSTAREC_EMR_APPLICATION_ID": "aws: the EMR Serverless application of the Spark engine (spark stack)",
    "INSTAREC_EMR_JOB_ROLE_ARN": "aws: the EMR Serverless job execution role",
    "INSTAREC_EMR_ARTIFACTS_URI": "aws: s3:// folder of the Spark job script and its packed Python environment",
    "INSTAREC_EMR_LOGS_URI": "aws: s3:// folder the Spark jobs' logs are written to",
    "INSTAREC_EMR_LOG_GROUP": "aws: CloudWatch log group of the Spark jobs' driver output (Pipes reads it)",
    "INSTAREC_EMR_STAGING_URI": "aws: s3:// folder the Spark jobs stage their outputs in",
    "INSTAREC_WAREHOUSE_SALT": "the salt of the warehouse's user_key (else a file under INSTAREC_HOME)",
    "INSTAREC_WAREHOUSE_SALT_SECRET": "aws: the Secrets Manager secret holding the warehouse salt (read with boto3)",
    "INSTAREC_ANALYST_BUCKET": "aws: the bucket of the analysts' masked tables (empty: not built)",
    "INSTAREC_ANALYST_DATABASE": "aws: the Glue database the masked tables are registered in",
    "INSTAREC_RETRAIN_EVERY_BATCHES": "refit the models after this many batches (default 4; 0 = off)",
    "INSTAREC_RETRAIN_MAX_AGE_DAYS": "refit a model this many days after its fitting batch (default 28; 0 = off)",
    "INSTAREC_RETRAIN_DRIFT_PSI": "refit when a drift measure reaches this (default 0.2; 0 = off)",
    "INSTAREC_ENGINE": "duckdb (default) or spark: the engine of the clean steps and the feature build (spark: locally the spark extra and Java 17; in aws mode EMR Serverless, INSTAREC_EMR_*)",
    "INSTAREC_ALERT_TOPIC_ARN": "aws: the SNS topic the run-failure sensor publishes to (empty: log only)",
}


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """The environment's settings, parsed once."""

    env: str = "local"
    home: str = ".instarec"
    raw_bucket: str = ""
    clean_bucket: str = ""
    curated_bucket: str = ""
    consumption_bucket: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"
    s3_timeout_s: float = 60.0
    threads: int = 0
    duckdb_memory_limit: str = "4GB"
    training_backend: str = ""
    graphsage_device: str = ""
    dynamodb_table: str = ""
    serving_keep_versions: int = 3
    serving_max_delta_chain: int = 8
    feature_max_delta_chain: int = 8
    sagemaker_role_arn: str = ""
    sagemaker_subnets: tuple[str, ...] = ()
    sagemaker_security_groups: tuple[str, ...] = ()
    kms_key_arn: str = ""
    emr_application_id: str = ""
    emr_job_role_arn: str = ""
    emr_artifacts_uri: str = ""
    emr_logs_uri: str = ""
    emr_log_group: str = ""
    emr_staging_uri: str = ""
    warehouse_salt: str | None = None
    warehouse_salt_secret: str = ""
    analyst_bucket: str = ""
    analyst_database: str = ""
    retrain_every_batches: int = 4
    retrain_max_age_days: int = 28
    retrain_drift_psi: float = 0.2
    alert_topic_arn: str = ""
    engine: str = "duckdb"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def text(name: str, default: str = "") -> str:
            return env.get(name, default).strip() or default

        def listed(name: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())

        return cls(
            env=text("INSTAREC_ENV", "local"),
            home=text("INSTAREC_HOME", ".instarec"),
            raw_bucket=text("INSTAREC_RAW_BUCKET"),
            clean_bucket=text("INSTAREC_CLEAN_BUCKET"),
            curated_bucket=text("INSTAREC_CURATED_BUCKET"),
            consumption_bucket=text("INSTAREC_CONSUMPTION_BUCKET"),
            endpoint_url=text("INSTAREC_AWS_ENDPOINT_URL"),
            region=text("AWS_REGION") or text("AWS_DEFAULT_REGION") or "us-east-1",
            s3_timeout_s=_number(env, "INSTAREC_S3_TIMEOUT_S", 60.0, positive=True),
            threads=_integer(env, "INSTAREC_THREADS", 0, minimum=0),
            duckdb_memory_limit=text("INSTAREC_DUCKDB_MEMORY_LIMIT", "4GB"),
            training_backend=text("INSTAREC_TRAINING_BACKEND"),
            graphsage_device=text("INSTAREC_GRAPHSAGE_DEVICE"),
            dynamodb_table=text("INSTAREC_DYNAMODB_TABLE"),
            serving_keep_versions=_integer(env, "INSTAREC_SERVING_KEEP_VERSIONS", 3, minimum=1),
            serving_max_delta_chain=_integer(env, "INSTAREC_SERVING_MAX_DELTA_CHAIN", 8, minimum=0),
            feature_max_delta_chain=_integer(env, "INSTAREC_FEATURE_MAX_DELTA_CHAIN", 8, minimum=0),
            sagemaker_role_arn=text("INSTAREC_SAGEMAKER_ROLE_ARN"),
            sagemaker_subnets=listed("INSTAREC_SAGEMAKER_SUBNETS"),
            sagemaker_security_groups=listed("INSTAREC_SAGEMAKER_SECURITY_GROUPS"),
            kms_key_arn=text("INSTAREC_KMS_KEY_ARN"),
            emr_application_id=text("INSTAREC_EMR_APPLICATION_ID"),
            emr_job_role_arn=text("INSTAREC_EMR_JOB_ROLE_ARN"),
            emr_artifacts_uri=text("INSTAREC_EMR_ARTIFACTS_URI").rstrip("/"),
            emr_logs_uri=text("INSTAREC_EMR_LOGS_URI").rstrip("/"),
            emr_log_group=text("INSTAREC_EMR_LOG_GROUP"),
            emr_staging_uri=text("INSTAREC_EMR_STAGING_URI").rstrip("/"),
            warehouse_salt=env.get("INSTAREC_WAREHOUSE_SALT"),
            warehouse_salt_secret=text("INSTAREC_WAREHOUSE_SALT_SECRET"),
            analyst_bucket=text("INSTAREC_ANALYST_BUCKET"),
            analyst_database=text("INSTAREC_ANALYST_DATABASE"),
            retrain_every_batches=_integer(env, "INSTAREC_RETRAIN_EVERY_BATCHES", 4, minimum=0),
            retrain_max_age_days=_integer(env, "INSTAREC_RETRAIN_MAX_AGE_DAYS", 28, minimum=0),
            retrain_drift_psi=_number(env, "INSTAREC_RETRAIN_DRIFT_PSI", 0.2),
            alert_topic_arn=text("INSTAREC_ALERT_TOPIC_ARN"),
            engine=_engine(text("INSTAREC_ENGINE", "duckdb").lower()),
        )


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        kind = "a positive integer" if minimum >= 1 else "a non-negative integer"
        raise SettingsError(f"{name} must be {kind}, not {raw!r}")
    return value


def _number(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    valid = value > 0 if positive else value >= 0.0 and value != float("inf")
    if not valid:
        kind = "a positive number" if positive else "a non-negative number"
        raise SettingsError(f"{name} must be {kind}, not {raw!r}")
    return value


def _engine(engine: str) -> str:
    if engine not in ("duckdb", "spark"):
        raise SettingsError(f"INSTAREC_ENGINE must be duckdb or spark, not {engine!r}")
    return engine


def missing_java(environ: Mapping[str, str] | None = None) -> str | None:
    """Why Spark's launcher (spark-class: JAVA_HOME's bin/java, else java on PATH) would find no
    Java runtime, or None when it finds one."""
    env = os.environ if environ is None else environ
    java_home = env.get("JAVA_HOME")
    if java_home:
        return None if Path(java_home, "bin", "java").is_file() else f"JAVA_HOME={java_home} has no bin/java"
    return None if shutil.which("java", path=env.get("PATH")) else "no java on PATH and no JAVA_HOME"
