"""XGBoost training and batch transform on SageMaker through plain boto3 (no SageMaker Python SDK).

The built-in `sagemaker-xgboost` container ("algorithm mode") is used as the seed system did:

- training data: CSV, label in the first column, no header, missing values as empty fields, in
  `s3://<curated bucket>/sagemaker/<job>/train/` and `.../validation/` (channels `train`, `validation`);
- the model: `s3://<curated bucket>/models/xgboost/<job>/output/model.tar.gz`, holding the booster
  as `xgboost-model`, downloaded, extracted and checked to load with `xgboost.Booster().load_model`;
- batch transform: a SageMaker model (image + model data URL + role), then a transform job over
  `s3://<curated bucket>/sagemaker/<job>/input/part-NNNNN.csv` (feature rows without label,
  `text/csv`, `SplitType=Line`), writing `part-NNNNN.csv.out` (one probability per line) to
  `s3://<curated bucket>/models/batch-transform/<job>/` (under `models/` because that is the
  prefix the SageMaker execution role may write, see `infra/stacks/ml.yaml`), read back in input
  row order.

Image version: the default is `3.0-5` (xgboost 3.0.5). The `1.x` containers (e.g. `1.7-1`) save
`xgboost-model` in XGBoost's legacy binary format, which xgboost >= 3.1 (this project pins a 3.x
build) can no longer read; `fetch_model` says so in one line if it meets such an artifact.
`xgboost_image_uri(region, version)` builds the URI from the official per-region registry
accounts (the table below, as published in the SageMaker Python SDK's `image_uri_config/xgboost.json`;
identical for 1.7-1, 3.0-5 and 3.2-0); pass `image_uri` to use anything else.

What a moto server cannot show (the tests run against one on 127.0.0.1):
no container ever runs. moto records the jobs and reports them `Completed` at once, but writes no
model artifact and no transform output: the tests upload a real `model.tar.gz` and real `.out`
files themselves, at the paths moto reports, then check everything the client does around them
(uploads, request parameters as `describe_*` returns them, polling, download, extraction,
alignment). IAM is not enforced (role ARNs, PassRole, bucket policies, KMS keys are accepted as
given), the VPC settings are stored but not used, and moto never reports `InProgress`, `Failed`
or `Stopped` by itself: the failure test sets a job's status inside the moto server's own state
(the client still reads it over HTTP), and the status machine is unit-tested with an injected
describe function.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import tarfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from botocore.config import Config
from botocore.exceptions import ClientError

from instarec_assets.settings import Settings

if TYPE_CHECKING:
    import xgboost

# Registry account of the official sagemaker-xgboost images per region (commercial and China partitions).
XGBOOST_IMAGE_ACCOUNTS: dict[str, str] = {
    "af-south-1": "510948584623",
    "ap-east-1": "651117190479",
    "ap-northeast-1": "354813040037",
    "ap-northeast-2": "366743142698",
    "ap-northeast-3": "867004704886",
    "ap-south-1": "720646828776",
    "ap-south-2": "628508329040",
    "ap-southeast-1": "121021644041",
    "ap-southeast-2": "783357654285",
    "ap-southeast-3": "951798379941",
    "ap-southeast-4": "106583098589",
    "ca-central-1": "341280168497",
    "ca-west-1": "190319476487",
    "cn-north-1": "450853457545",
    "cn-northwest-1": "451049120500",
    "eu-central-1": "492215442770",
    "eu-central-2": "680994064768",
    "eu-north-1": "662702820516",
    "eu-south-1": "978288397137",
    "eu-south-2": "104374241257",
    "eu-west-1": "141502667606",
    "eu-west-2": "764974769150",
    "eu-west-3": "659782779980",
    "il-central-1": "898809789911",
    "me-central-1": "272398656194",
    "me-south-1": "801668240914",
    "sa-east-1": "737474898029",
    "us-east-1": "683313688378",
    "us-east-2": "257758044811",
    "us-west-1": "746614075791",
    "us-west-2": "246618743249",
}
DEFAULT_XGBOOST_VERSION = "3.0-5"
MODEL_FILE = "xgboost-model"

DEFAULT_HYPERPARAMETERS: dict[str, str] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "num_round": "500",
    "early_stopping_rounds": "20",
    "max_depth": "6",
    "eta": "0.1",
    "subsample": "0.8",
    "colsample_bytree": "0.8",
    "min_child_weight": "1",
    "tree_method": "hist",
}

JOB_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
SUCCEEDED = "Completed"
FAILED = ("Failed", "Stopped")

StatusCallback = Callable[[str, Mapping[str, Any]], Any]


class SageMakerJobError(RuntimeError):
    """A job that failed, stopped or timed out, a missing artifact, or unusable input; one line."""

    def __init__(self, message: str, *, job_name: str = "", status: str = "", failure_reason: str = ""):
        super().__init__(message)
        self.job_name = job_name
        self.status = status
        self.failure_reason = failure_reason


def xgboost_image_uri(region: str, version: str = DEFAULT_XGBOOST_VERSION) -> str:
    """`<account>.dkr.ecr.<region>.amazonaws.com/sagemaker-xgboost:<version>`."""
    account = XGBOOST_IMAGE_ACCOUNTS.get(region)
    if account is None:
        raise SageMakerJobError(
            f"no sagemaker-xgboost registry account is known for region {region!r}; pass image_uri explicitly"
        )
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/sagemaker-xgboost:{version}"


def make_job_name(prefix: str = "instarec-xgb", now: dt.datetime | None = None) -> str:
    """`<prefix>-YYYYmmdd-HHMMSS-xxxx`, unique, at most 63 characters (the prefix is shortened to fit).

    Keep the `instarec-` prefix: the dagster-run role may only create jobs named `instarec-*`.
    """
    now = now or dt.datetime.now(dt.UTC)
    suffix = f"-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    name = prefix[: 63 - len(suffix)].rstrip("-") + suffix
    check_job_name(name)
    return name


def check_job_name(name: str) -> str:
    if not JOB_NAME_PATTERN.match(name):
        raise SageMakerJobError(
            f"SageMaker job name {name!r} must be 1-63 letters, digits and hyphens, starting with a letter or digit"
        )
    return name


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise SageMakerJobError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def wait_for_job(
    describe: Callable[[], Mapping[str, Any]],
    *,
    kind: str,
    name: str,
    status_key: str,
    poll_interval_s: float,
    timeout_s: float,
    stop: Callable[[], Any] | None = None,
    on_status: Callable[[str, Mapping[str, Any]], Any] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Mapping[str, Any]:
    """Poll `describe()` until `status_key` is Completed (returned), Failed or Stopped (raised).

    Past `timeout_s` it calls `stop()` (if given) and raises. `on_status` sees every status change.
    """
    started = clock()
    last = None
    while True:
        description = describe()
        status = description[status_key]
        if status != last:
            last = status
            if on_status is not None:
                on_status(status, description)
        if status == SUCCEEDED:
            return description
        if status in FAILED:
            reason = _one_line(
                description.get("FailureReason") or description.get("ExitMessage") or "no reason given"
            )
            raise SageMakerJobError(
                f"SageMaker {kind} job {name} {status.lower()}: {reason}",
                job_name=name,
                status=status,
                failure_reason=reason,
            )
        if clock() - started >= timeout_s:
            if stop is not None:
                stop()
            raise SageMakerJobError(
                f"SageMaker {kind} job {name} still {status} after {timeout_s:.0f} s"
                + ("; a stop was requested" if stop is not None else ""),
                job_name=name,
                status=status,
            )
        sleep(poll_interval_s)


# ---------------------------------------------------------------- data preparation
def _as_table(data: Any, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise SageMakerJobError(f"{what} must be a 2-D array, not {data.ndim}-D")
        return pa.table({f"f{index}": data[:, index] for index in range(data.shape[1])})
    if type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame":
        return pa.Table.from_pandas(data, preserve_index=False)
    raise SageMakerJobError(
        f"{what} must be a pyarrow Table, pandas DataFrame or 2-D numpy array, not {type(data).__name__}"
    )


def _numeric_column(table: pa.Table, name: str, what: str) -> pa.ChunkedArray:
    column = table.column(name)
    kind = column.type
    if pa.types.is_boolean(kind):
        return column.cast(pa.int8())
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return column
    if pa.types.is_decimal(kind):
        return column.cast(pa.float64())
    raise SageMakerJobError(f"{what} column {name} is {kind}; only numeric and boolean columns can be used")


def feature_table(
    data: Any, feature_names: tuple[str, ...] | None = None, what: str = "features"
) -> pa.Table:
    """Numeric feature columns, in `feature_names` order when given (as training used them)."""
    table = _as_table(data, what)
    names = tuple(feature_names) if feature_names is not None else tuple(table.column_names)
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise SageMakerJobError(f"{what} lack column(s) the model was trained on: {', '.join(missing)}")
    if not names:
        raise SageMakerJobError(f"{what} have no columns")
    return pa.table({name: _numeric_column(table, name, what) for name in names})


def training_table(
    data: Any, label_column: str, what: str = "training data"
) -> tuple[pa.Table, tuple[str, ...]]:
    """The container's layout: label first, then every other column as a feature."""
    table = _as_table(data, what)
    if label_column not in table.column_names:
        raise SageMakerJobError(f"{what} has no label column {label_column!r}")
    label = _numeric_column(table, label_column, what)
    if label.null_count:
        raise SageMakerJobError(f"{what} label column {label_column} has {label.null_count} null value(s)")
    features = tuple(name for name in table.column_names if name != label_column)
    body = feature_table(table, features, what)
    return pa.table({label_column: label, **{name: body.column(name) for name in features}}), features


def write_csv(table: pa.Table, path: Path) -> None:
    """No header; nulls as empty fields and NaN as `nan`, both read as missing by XGBoost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=False))


def parse_predictions(text: str) -> np.ndarray:
    """One value per line (blank lines between mini-batches tolerated)."""
    tokens = text.split()
    if not tokens:
        return np.empty(0, dtype=np.float64)
    try:
        return np.array(tokens, dtype=np.float64)
    except ValueError as error:
        raise SageMakerJobError(f"transform output is not one number per line: {error}") from None


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class TrainingResult:
    job_name: str
    job_arn: str
    image_uri: str
    hyperparameters: dict[str, str]
    train_uri: str
    validation_uri: str | None
    train_rows: int | None
    validation_rows: int | None
    feature_names: tuple[str, ...]
    model_artifact_uri: str
    model_path: Path
    metrics: dict[str, float]
    billable_seconds: int | None
    upload_seconds: float
    wait_seconds: float
    download_seconds: float

    @property
    def seconds(self) -> float:
        return self.upload_seconds + self.wait_seconds + self.download_seconds

    def load_booster(self) -> xgboost.Booster:
        return load_booster(self.model_path)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "job_name": self.job_name,
            "image_uri": self.image_uri,
            "model_artifact_uri": self.model_artifact_uri,
            "train_uri": self.train_uri,
            "validation_uri": self.validation_uri or "",
            "train_rows": self.train_rows if self.train_rows is not None else -1,
            "validation_rows": self.validation_rows if self.validation_rows is not None else -1,
            "features": len(self.feature_names),
            "billable_seconds": self.billable_seconds if self.billable_seconds is not None else -1,
            "upload_seconds": round(self.upload_seconds, 3),
            "wait_seconds": round(self.wait_seconds, 3),
            "download_seconds": round(self.download_seconds, 3),
            **{f"metric:{name}": value for name, value in self.metrics.items()},
        }


@dataclass(frozen=True)
class TransformResult:
    job_name: str
    model_name: str
    input_uri: str
    output_uri: str
    predictions: np.ndarray = field(repr=False)
    upload_seconds: float
    wait_seconds: float
    download_seconds: float

    @property
    def rows(self) -> int:
        return len(self.predictions)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "job_name": self.job_name,
            "input_uri": self.input_uri,
            "output_uri": self.output_uri,
            "rows": self.rows,
            "upload_seconds": round(self.upload_seconds, 3),
            "wait_seconds": round(self.wait_seconds, 3),
            "download_seconds": round(self.download_seconds, 3),
        }


def load_booster(path: Path) -> xgboost.Booster:
    """Load `xgboost-model`; a legacy-binary artifact (1.x containers) fails with a one-line reason."""
    import xgboost

    booster = xgboost.Booster()
    try:
        with (
            warnings.catch_warnings()
        ):  # "Unknown file format": the name has no extension, the content decides
            warnings.simplefilter("ignore", UserWarning)
            booster.load_model(str(path))
    except xgboost.core.XGBoostError as error:
        head = Path(path).read_bytes()[:1]
        if head != b"{":
            raise SageMakerJobError(
                f"{path} is in XGBoost's legacy binary model format (written by sagemaker-xgboost 1.x images), "
                f"which xgboost {xgboost.__version__} cannot read; train with xgboost_version "
                f"{DEFAULT_XGBOOST_VERSION} or later"
            ) from None
        raise SageMakerJobError(
            f"{path} is not a loadable XGBoost model: {_one_line(str(error))[:300]}"
        ) from None
    return booster


# ---------------------------------------------------------------- client
@dataclass(frozen=True)
class SageMakerSettings:
    """Where jobs run and write. `from_env()` reads what the orchestration stack sets."""

    role_arn: str
    bucket: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    data_prefix: str = "sagemaker"
    model_prefix: str = "models/xgboost"
    transform_output_prefix: str = "models/batch-transform"
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_s: int = 4 * 3600
    transform_instance_type: str = "ml.m5.xlarge"
    transform_instance_count: int = 1
    xgboost_version: str = DEFAULT_XGBOOST_VERSION
    image_uri: str | None = None
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    kms_key_id: str | None = None
    poll_interval_s: float = 30.0
    timeout_s: float = 6 * 3600
    tags: tuple[tuple[str, str], ...] = (("project", "instarec"),)

    @classmethod
    def from_env(cls, **overrides: Any) -> SageMakerSettings:
        """INSTAREC_SAGEMAKER_ROLE_ARN, INSTAREC_CURATED_BUCKET, AWS_REGION, INSTAREC_AWS_ENDPOINT_URL,
        INSTAREC_SAGEMAKER_SUBNETS / _SECURITY_GROUPS (comma-separated), INSTAREC_KMS_KEY_ARN."""

        environment = Settings.from_env()
        settings: dict[str, Any] = {
            "role_arn": environment.sagemaker_role_arn,
            "bucket": environment.curated_bucket,
            "region": environment.region,
            "endpoint_url": environment.endpoint_url or None,
            "subnets": environment.sagemaker_subnets,
            "security_group_ids": environment.sagemaker_security_groups,
            "kms_key_id": environment.kms_key_arn or None,
        }
        settings.update(overrides)
        return cls(**settings)

    def validate(self) -> None:
        if not self.role_arn:
            raise SageMakerJobError(
                "a SageMaker execution role ARN is required (INSTAREC_SAGEMAKER_ROLE_ARN)"
            )
        if not self.bucket:
            raise SageMakerJobError("the curated bucket is required (INSTAREC_CURATED_BUCKET)")

    @property
    def image(self) -> str:
        return self.image_uri or xgboost_image_uri(self.region, self.xgboost_version)

    def aws_tags(self) -> list[dict[str, str]]:
        return [{"Key": key, "Value": value} for key, value in self.tags]

    def vpc_config(self) -> dict[str, Any]:
        if not self.subnets:
            return {}
        return {
            "VpcConfig": {"Subnets": list(self.subnets), "SecurityGroupIds": list(self.security_group_ids)}
        }


class SageMakerXGBoost:
    """Train the built-in XGBoost container and score with batch transform; see the module docstring."""

    def __init__(
        self,
        settings: SageMakerSettings,
        *,
        session: boto3.session.Session | None = None,
        on_status: StatusCallback | None = None,
    ):
        """`on_status` sees every status change of every job this client waits for, before any
        per-call `on_status`: a place to log progress (and where the tests act as the container)."""
        settings.validate()
        self.settings = settings
        self.on_status = on_status
        session = session or boto3.session.Session()
        common: dict[str, Any] = {"region_name": settings.region}
        if settings.endpoint_url:
            common["endpoint_url"] = settings.endpoint_url
        config = Config(retries={"max_attempts": 10, "mode": "standard"})
        self.sagemaker = session.client("sagemaker", config=config, **common)
        self.s3 = session.client("s3", config=config, **common)

    def _watchers(self, on_status: StatusCallback | None) -> StatusCallback | None:
        watchers = [watcher for watcher in (self.on_status, on_status) if watcher is not None]
        if len(watchers) < 2:
            return watchers[0] if watchers else None

        def both(status: str, description: Mapping[str, Any]) -> None:
            for watcher in watchers:
                watcher(status, description)

        return both

    # ------------------------------------------------------------ S3 helpers
    def _uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.settings.bucket, *(part.strip("/") for part in parts)])

    def _upload(self, path: Path, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        extra = (
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.settings.kms_key_id}
            if self.settings.kms_key_id
            else None
        )
        self.s3.upload_file(str(path), bucket, key, ExtraArgs=extra)

    def _upload_channel(
        self, data: Any, label_column: str, channel: str, job_name: str, workdir: Path
    ) -> tuple[str, int | None, tuple[str, ...] | None]:
        """A channel prefix in S3: uploaded from a table, or an s3:// prefix already in the container format."""
        if isinstance(data, str):
            split_s3_uri(data)
            return data, None, None
        table, features = training_table(data, label_column, what=f"{channel} data")
        if table.num_rows == 0:
            raise SageMakerJobError(f"{channel} data has no rows")
        path = workdir / job_name / channel / f"{channel}.csv"
        write_csv(table, path)
        prefix = self._uri(self.settings.data_prefix, job_name, channel) + "/"
        self._upload(path, prefix + path.name)
        return prefix, table.num_rows, features

    # ------------------------------------------------------------ training
    def start_training_job(
        self,
        *,
        train: Any,
        validation: Any | None = None,
        label_column: str = "label",
        hyperparameters: Mapping[str, Any] | None = None,
        job_name: str | None = None,
        workdir: Path,
    ) -> dict[str, Any]:
        """Upload the channels and create the training job; returns what `wait_training_job` needs."""
        job_name = check_job_name(job_name or make_job_name())
        started = time.perf_counter()
        train_uri, train_rows, features = self._upload_channel(
            train, label_column, "train", job_name, Path(workdir)
        )
        validation_uri = validation_rows = None
        if validation is not None:
            validation_uri, validation_rows, validation_features = self._upload_channel(
                validation, label_column, "validation", job_name, Path(workdir)
            )
            if features is not None and validation_features is not None and validation_features != features:
                raise SageMakerJobError(
                    f"validation columns {list(validation_features)} differ from training columns {list(features)}"
                )
        params = {
            **DEFAULT_HYPERPARAMETERS,
            **{key: str(value) for key, value in (hyperparameters or {}).items()},
        }
        if validation is None:
            if hyperparameters and "early_stopping_rounds" in hyperparameters:
                raise SageMakerJobError("early_stopping_rounds needs a validation channel")
            params.pop("early_stopping_rounds", None)
        params = {key: str(value) for key, value in params.items()}

        channels = [self._channel("train", train_uri)]
        if validation_uri is not None:
            channels.append(self._channel("validation", validation_uri))
        output: dict[str, Any] = {"S3OutputPath": self._uri(self.settings.model_prefix) + "/"}
        resources: dict[str, Any] = {
            "InstanceType": self.settings.instance_type,
            "InstanceCount": self.settings.instance_count,
            "VolumeSizeInGB": self.settings.volume_size_gb,
        }
        if self.settings.kms_key_id:
            output["KmsKeyId"] = self.settings.kms_key_id
            resources["VolumeKmsKeyId"] = self.settings.kms_key_id
        response = self.sagemaker.create_training_job(
            TrainingJobName=job_name,
            AlgorithmSpecification={"TrainingImage": self.settings.image, "TrainingInputMode": "File"},
            RoleArn=self.settings.role_arn,
            HyperParameters=params,
            InputDataConfig=channels,
            OutputDataConfig=output,
            ResourceConfig=resources,
            StoppingCondition={"MaxRuntimeInSeconds": self.settings.max_runtime_s},
            Tags=self.settings.aws_tags(),
            **self.settings.vpc_config(),
        )
        return {
            "job_name": job_name,
            "job_arn": response["TrainingJobArn"],
            "hyperparameters": params,
            "train_uri": train_uri,
            "validation_uri": validation_uri,
            "train_rows": train_rows,
            "validation_rows": validation_rows,
            "feature_names": features or (),
            "upload_seconds": time.perf_counter() - started,
        }

    @staticmethod
    def _channel(name: str, uri: str) -> dict[str, Any]:
        return {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "ContentType": "text/csv",
            "CompressionType": "None",
        }

    def wait_training_job(self, job_name: str, **kwargs: Any) -> Mapping[str, Any]:
        """Poll until Completed; Failed/Stopped raise with FailureReason; a timeout stops the job."""
        return wait_for_job(
            lambda: self.sagemaker.describe_training_job(TrainingJobName=job_name),
            kind="training",
            name=job_name,
            status_key="TrainingJobStatus",
            poll_interval_s=kwargs.pop("poll_interval_s", self.settings.poll_interval_s),
            timeout_s=kwargs.pop("timeout_s", self.settings.timeout_s),
            stop=lambda: self.sagemaker.stop_training_job(TrainingJobName=job_name),
            on_status=self._watchers(kwargs.pop("on_status", None)),
            **kwargs,
        )

    def fetch_model(self, artifact_uri: str, directory: Path) -> Path:
        """Download model.tar.gz, extract `xgboost-model` into `directory`, check that it loads."""
        bucket, key = split_s3_uri(artifact_uri)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        archive = directory / "model.tar.gz"
        try:
            self.s3.download_file(bucket, key, str(archive))
        except ClientError as error:
            raise SageMakerJobError(
                f"model artifact {artifact_uri} could not be downloaded: {_one_line(str(error))}"
            ) from None
        target = directory / MODEL_FILE
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name == MODEL_FILE]
            if not members:
                names = ", ".join(m.name for m in tar.getmembers()) or "nothing"
                raise SageMakerJobError(f"{artifact_uri} holds no {MODEL_FILE} (it holds {names})")
            source = tar.extractfile(members[0])
            assert source is not None
            target.write_bytes(source.read())
        load_booster(target)
        return target

    def run_training_job(
        self,
        *,
        train: Any,
        validation: Any | None = None,
        label_column: str = "label",
        hyperparameters: Mapping[str, Any] | None = None,
        job_name: str | None = None,
        workdir: Path,
        on_status: Callable[[str, Mapping[str, Any]], Any] | None = None,
    ) -> TrainingResult:
        """Upload, train, wait, download: the whole lifecycle of one training job.

        `train` / `validation`: a pyarrow Table, pandas DataFrame (label column + numeric features)
        or an `s3://` prefix already in the container's CSV layout.
        """
        started = self.start_training_job(
            train=train,
            validation=validation,
            label_column=label_column,
            hyperparameters=hyperparameters,
            job_name=job_name,
            workdir=workdir,
        )
        name = started["job_name"]
        waited = time.perf_counter()
        description = self.wait_training_job(name, on_status=on_status)
        downloaded = time.perf_counter()
        artifact = description["ModelArtifacts"]["S3ModelArtifacts"]
        model_path = self.fetch_model(artifact, Path(workdir) / name / "model")
        finished = time.perf_counter()
        metrics = {m["MetricName"]: float(m["Value"]) for m in description.get("FinalMetricDataList", [])}
        return TrainingResult(
            job_name=name,
            job_arn=started["job_arn"],
            image_uri=description["AlgorithmSpecification"]["TrainingImage"],
            hyperparameters=started["hyperparameters"],
            train_uri=started["train_uri"],
            validation_uri=started["validation_uri"],
            train_rows=started["train_rows"],
            validation_rows=started["validation_rows"],
            feature_names=tuple(started["feature_names"]),
            model_artifact_uri=artifact,
            model_path=model_path,
            metrics=metrics,
            billable_seconds=description.get("BillableTimeInSeconds"),
            upload_seconds=started["upload_seconds"],
            wait_seconds=downloaded - waited,
            download_seconds=finished - downloaded,
        )

    # ------------------------------------------------------------ batch transform
    def transform_input_uri(self, job_name: str) -> str:
        """`s3://<bucket>/sagemaker/<job>/input/`: one prefix per job, read by the execution role."""
        return self._uri(self.settings.data_prefix, check_job_name(job_name), "input") + "/"

    def transform_output_uri(self, job_name: str) -> str:
        """`s3://<bucket>/models/batch-transform/<job>/`: where the container writes `<part>.out`."""
        return self._uri(self.settings.transform_output_prefix, check_job_name(job_name)) + "/"

    def upload_transform_part(
        self,
        job_name: str,
        number: int,
        features: Any,
        feature_names: tuple[str, ...] | None,
        workdir: Path,
        keep_file: bool = True,
    ) -> tuple[str, int]:
        """Write one headerless CSV part (features in `feature_names` order) and upload it.

        Returns `(part name, rows)`, what `read_transform_part` needs to check the output.
        """
        table = feature_table(features, feature_names)
        name = f"part-{number:05d}.csv"
        path = Path(workdir) / job_name / "input" / name
        write_csv(table, path)
        self._upload(path, self.transform_input_uri(job_name) + name)
        if not keep_file:
            path.unlink()
        return name, table.num_rows

    def create_transform_job(self, job_name: str, model_data_url: str) -> None:
        """A SageMaker model named like the job (image + artifact + role), then the transform job over
        everything uploaded under `transform_input_uri(job_name)`."""
        split_s3_uri(model_data_url)
        self.sagemaker.create_model(
            ModelName=job_name,
            ExecutionRoleArn=self.settings.role_arn,
            PrimaryContainer={"Image": self.settings.image, "ModelDataUrl": model_data_url},
            Tags=self.settings.aws_tags(),
            **self.settings.vpc_config(),
        )
        output: dict[str, Any] = {
            "S3OutputPath": self.transform_output_uri(job_name),
            "Accept": "text/csv",
            "AssembleWith": "Line",
        }
        resources: dict[str, Any] = {
            "InstanceType": self.settings.transform_instance_type,
            "InstanceCount": self.settings.transform_instance_count,
        }
        if self.settings.kms_key_id:
            output["KmsKeyId"] = self.settings.kms_key_id
            resources["VolumeKmsKeyId"] = self.settings.kms_key_id
        self.sagemaker.create_transform_job(
            TransformJobName=job_name,
            ModelName=job_name,
            BatchStrategy="MultiRecord",
            MaxPayloadInMB=6,
            TransformInput={
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": self.transform_input_uri(job_name)}
                },
                "ContentType": "text/csv",
                "SplitType": "Line",
                "CompressionType": "None",
            },
            TransformOutput=output,
            TransformResources=resources,
            Tags=self.settings.aws_tags(),
        )

    def start_batch_transform(
        self,
        *,
        model_data_url: str,
        features: Any,
        feature_names: tuple[str, ...] | None = None,
        job_name: str | None = None,
        workdir: Path,
        rows_per_file: int = 500_000,
    ) -> dict[str, Any]:
        """Upload the feature rows as CSV parts, create the model and the transform job."""
        job_name = check_job_name(job_name or make_job_name("instarec-score"))
        split_s3_uri(model_data_url)
        started = time.perf_counter()
        table = feature_table(features, feature_names)
        if table.num_rows == 0:
            raise SageMakerJobError("there are no feature rows to score")
        parts = [
            self.upload_transform_part(job_name, number, table.slice(offset, rows_per_file), None, workdir)
            for number, offset in enumerate(range(0, table.num_rows, rows_per_file))
        ]
        uploaded = time.perf_counter()
        self.create_transform_job(job_name, model_data_url)
        return {
            "job_name": job_name,
            "input_uri": self.transform_input_uri(job_name),
            "output_uri": self.transform_output_uri(job_name),
            "parts": parts,
            "upload_seconds": uploaded - started,
        }

    def wait_batch_transform(self, job_name: str, **kwargs: Any) -> Mapping[str, Any]:
        return wait_for_job(
            lambda: self.sagemaker.describe_transform_job(TransformJobName=job_name),
            kind="batch transform",
            name=job_name,
            status_key="TransformJobStatus",
            poll_interval_s=kwargs.pop("poll_interval_s", self.settings.poll_interval_s),
            timeout_s=kwargs.pop("timeout_s", self.settings.timeout_s),
            stop=lambda: self.sagemaker.stop_transform_job(TransformJobName=job_name),
            on_status=self._watchers(kwargs.pop("on_status", None)),
            **kwargs,
        )

    def read_transform_part(self, job_name: str, output_uri: str, name: str, rows: int) -> np.ndarray:
        """`<part>.out` of one input part; it must hold exactly one prediction per input row."""
        bucket, prefix = split_s3_uri(output_uri)
        key = f"{prefix}{name}.out"
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise SageMakerJobError(
                f"batch transform {job_name} completed but s3://{bucket}/{key} does not exist",
                job_name=job_name,
            ) from None
        values = parse_predictions(body.decode())
        if len(values) != rows:
            raise SageMakerJobError(
                f"batch transform {job_name}: s3://{bucket}/{key} has {len(values)} predictions for {rows} input rows",
                job_name=job_name,
            )
        return values

    def read_transform_output(
        self, job_name: str, output_uri: str, parts: list[tuple[str, int]]
    ) -> np.ndarray:
        """`<part>.out` for each input part, in input order; row counts must match exactly."""
        return np.concatenate(
            [self.read_transform_part(job_name, output_uri, name, rows) for name, rows in parts]
        )

    def run_batch_transform(
        self,
        *,
        model_data_url: str,
        features: Any,
        feature_names: tuple[str, ...] | None = None,
        job_name: str | None = None,
        workdir: Path,
        rows_per_file: int = 500_000,
        delete_model: bool = True,
        on_status: Callable[[str, Mapping[str, Any]], Any] | None = None,
    ) -> TransformResult:
        """Score `features` (numeric columns, `feature_names` order) with the model at `model_data_url`.

        Returns the predictions as a float64 array aligned with the input rows.
        """
        started = self.start_batch_transform(
            model_data_url=model_data_url,
            features=features,
            feature_names=feature_names,
            job_name=job_name,
            workdir=workdir,
            rows_per_file=rows_per_file,
        )
        name = started["job_name"]
        try:
            waited = time.perf_counter()
            self.wait_batch_transform(name, on_status=on_status)
            downloaded = time.perf_counter()
            predictions = self.read_transform_output(name, started["output_uri"], started["parts"])
            finished = time.perf_counter()
        finally:
            if delete_model:
                self.sagemaker.delete_model(ModelName=name)
        return TransformResult(
            job_name=name,
            model_name=name,
            input_uri=started["input_uri"],
            output_uri=started["output_uri"],
            predictions=predictions,
            upload_seconds=started["upload_seconds"],
            wait_seconds=downloaded - waited,
            download_seconds=finished - downloaded,
        )
