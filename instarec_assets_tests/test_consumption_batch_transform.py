"""reorder_predictions scored by a SageMaker batch transform job, against the moto server on 127.0.0.1.

moto runs no container: it records the jobs and reports them Completed at once. So the test plays
the container, from the client's `on_status` hook, which fires when the client first sees
`Completed` (between "the job finished" and "the client reads its output"): for a training job it
reads the uploaded CSV channels back from moto's S3 over HTTP, trains XGBoost with the job's
hyperparameters and writes `model.tar.gz` where moto says the artifact is; for a transform job it
reads the model named in the job (DescribeModel, then its `model.tar.gz`) and scores each uploaded
CSV part into `<part>.out`. Everything else is the real client: real boto3 HTTP, no patched clients.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from botocore.exceptions import ClientError
from dagster import AssetKey, AssetSelection, DagsterEventType, DagsterInstance, materialize
from moto.core import DEFAULT_ACCOUNT_ID

from instarec_assets.backends.sagemaker import SageMakerJobError, SageMakerSettings, SageMakerXGBoost
from instarec_assets.consumption.batch_transform import (
    BATCH_TRANSFORM,
    IN_PROCESS,
    model_data_url,
    score_with_batch_transform,
)
from instarec_assets.consumption.recommendations import PREDICTIONS_SCHEMA
from instarec_assets.definitions import build_definitions, build_resources
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import land_folder, register_batch
from instarec_assets.resources import ModelTrainingResource
from instarec_assets_tests.aws_fixtures import REGION, train_like_the_container

pytestmark = pytest.mark.aws
ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/instarec-test-sagemaker-execution"
PREDICTIONS = AssetKey("reorder_predictions")


# ---------------------------------------------------------------- the container moto cannot run
def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class Container:
    """What the sagemaker-xgboost container would do, done over real HTTP against the moto server."""

    def __init__(self, endpoint: str, drop_output_lines: int = 0):
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        self.sm = boto3.client("sagemaker", endpoint_url=endpoint, region_name=REGION)
        self.drop_output_lines = drop_output_lines
        self.input_parts: list[pd.DataFrame] = []
        self.jobs: list[Mapping[str, Any]] = []

    def __call__(self, status: str, description: Mapping[str, Any]) -> None:
        if status != "Completed":
            return
        self.jobs.append(description)
        if "TrainingJobName" in description:
            self._train(description)
        elif "TransformJobName" in description:
            self._transform(description)

    def _get(self, uri: str) -> bytes:
        bucket, key = _split(uri)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def _put(self, uri: str, body: bytes) -> None:
        bucket, key = _split(uri)
        self.s3.put_object(Bucket=bucket, Key=key, Body=body)

    def _csv_objects(self, prefix_uri: str) -> list[str]:
        bucket, prefix = _split(prefix_uri)
        listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(f"s3://{bucket}/{entry['Key']}" for entry in listed)

    def _read_csv(self, uri: str) -> pd.DataFrame:
        """Headerless CSV, as the container reads `text/csv` (empty fields and `nan` are missing)."""
        return pd.read_csv(io.BytesIO(self._get(uri)), header=None, dtype=np.float64)

    def _channel(self, description: Mapping[str, Any], name: str) -> xgb.DMatrix:
        [channel] = [c for c in description["InputDataConfig"] if c["ChannelName"] == name]
        frame = pd.concat(
            [self._read_csv(uri) for uri in self._csv_objects(channel["DataSource"]["S3DataSource"]["S3Uri"])]
        )
        return xgb.DMatrix(frame.iloc[:, 1:].to_numpy(), label=frame.iloc[:, 0].to_numpy())

    def _train(self, description: Mapping[str, Any]) -> None:
        booster = train_like_the_container(
            description["HyperParameters"],
            self._channel(description, "train"),
            self._channel(description, "validation"),
        )
        buffer = io.BytesIO()
        payload = booster.save_raw("ubj")
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo("xgboost-model")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(bytes(payload)))
        self._put(description["ModelArtifacts"]["S3ModelArtifacts"], buffer.getvalue())

    def _transform(self, description: Mapping[str, Any]) -> None:
        model = self.sm.describe_model(ModelName=description["ModelName"])
        with tarfile.open(fileobj=io.BytesIO(self._get(model["PrimaryContainer"]["ModelDataUrl"]))) as tar:
            member = tar.extractfile("xgboost-model")
            assert member is not None
            booster = xgb.Booster()
            booster.load_model(bytearray(member.read()))
        source = description["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        for number, uri in enumerate(self._csv_objects(source)):
            rows = self._read_csv(uri)
            self.input_parts.append(rows)
            predictions = booster.predict(xgb.DMatrix(rows.to_numpy())).tolist()
            if number == 0 and self.drop_output_lines:
                predictions = predictions[: -self.drop_output_lines]
            name = uri.rsplit("/", 1)[1]
            body = "\n".join(map(str, predictions)) + "\n"
            self._put(description["TransformOutput"]["S3OutputPath"] + name + ".out", body.encode())


class ContainerTraining(ModelTrainingResource):
    """The sagemaker backend as configured from the environment, with this test as the container."""

    drop_output_lines: int = 0

    def sagemaker_client(self) -> SageMakerXGBoost:
        client = super().sagemaker_client()
        client.on_status = Container(client.settings.endpoint_url or "", self.drop_output_lines)
        return client


# ---------------------------------------------------------------- the asset, through Dagster
def _predictions(aws_env: str, locations: LakeLocations) -> pa.Table:
    body = (
        boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
        .get_object(
            Bucket=locations.consumption_bucket,
            Key="reorder_predictions/year=2025/month=01/day=06/reorder_predictions.parquet",
        )["Body"]
        .read()
    )
    return pq.read_table(io.BytesIO(body))


def _metadata(result, key: AssetKey) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def _step_error(result, step: str) -> str:
    [event] = [
        e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE and e.step_key == step
    ]
    error = event.event_specific_data.error
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


@pytest.mark.slow
def test_reorder_predictions_by_batch_transform_match_in_process_scoring(
    aws_locations: LakeLocations, aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from instarec_assets.generate import generate_dataset

    monkeypatch.setenv("INSTAREC_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("INSTAREC_CURATED_BUCKET", aws_locations.curated_bucket)
    batch = generate_dataset(tmp_path / "generated", users=150, seed=5).batches[0]
    assert batch.partition == "2025-01-06"
    land_folder(batch.folder, aws_locations, batch.partition)
    assets = list(build_definitions(aws_locations).assets)
    resources = build_resources(aws_locations)
    sagemaker = ContainerTraining(backend="sagemaker")

    with DagsterInstance.ephemeral() as instance:
        register_batch(instance, batch.partition)
        result = materialize(
            assets,
            instance=instance,
            partition_key=batch.partition,
            resources={**resources, "training": sagemaker},
            selection=AssetSelection.keys(PREDICTIONS).upstream().required_multi_asset_neighbors(),
        )
        assert result.success
        by_transform = _predictions(aws_env, aws_locations)
        metadata = _metadata(result, PREDICTIONS)

        in_process = materialize(
            assets,
            instance=instance,
            partition_key=batch.partition,
            resources={**resources, "training": ModelTrainingResource(backend="local")},
            selection=[PREDICTIONS],
        )
        assert in_process.success
        by_booster = _predictions(aws_env, aws_locations)
        local_metadata = _metadata(in_process, PREDICTIONS)

        # the same rows in the same order, the same probabilities, the same schema
        assert by_transform.schema == PREDICTIONS_SCHEMA
        assert by_transform.num_rows == by_booster.num_rows > 1000
        assert by_transform.drop_columns(["probability"]).equals(by_booster.drop_columns(["probability"]))
        np.testing.assert_allclose(
            by_transform.column("probability").to_numpy(),
            by_booster.column("probability").to_numpy(),
            rtol=1e-5,
            atol=1e-6,
        )

        # what the asset records
        job = metadata["batch_transform_job"]
        assert metadata["scoring"] == BATCH_TRANSFORM and local_metadata["scoring"] == IN_PROCESS
        assert job.startswith("instarec-score-") and "batch_transform_job" not in local_metadata
        assert metadata["scoring_seconds"] >= 0 and local_metadata["scoring_seconds"] >= 0
        assert metadata["batch_transform"]["rows"] == by_transform.num_rows

        # what the container was given: headerless CSV (read as numbers), the model card's features,
        # every row once; and the job as SageMaker recorded it
        s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
        card = json.loads(
            s3.get_object(
                Bucket=aws_locations.curated_bucket,
                Key="models/xgboost_model/year=2025/month=01/day=06/model_card.json",
            )["Body"].read()
        )
        assert metadata["batch_transform"]["model_data_url"] == card["sagemaker_model_artifact"]
        input_bucket, input_prefix = _split(metadata["batch_transform"]["input_uri"])
        parts = [
            pd.read_csv(
                io.BytesIO(s3.get_object(Bucket=input_bucket, Key=entry["Key"])["Body"].read()), header=None
            )
            for entry in s3.list_objects_v2(Bucket=input_bucket, Prefix=input_prefix)["Contents"]
        ]
        assert sum(len(part) for part in parts) == by_transform.num_rows
        assert {part.shape[1] for part in parts} == {len(card["features"])}
        sm = boto3.client("sagemaker", endpoint_url=aws_env, region_name=REGION)
        described = sm.describe_transform_job(TransformJobName=job)
        assert described["TransformJobStatus"] == "Completed"
        assert described["TransformOutput"]["S3OutputPath"].startswith(
            f"s3://{aws_locations.curated_bucket}/models/batch-transform/{job}/"
        )
        with pytest.raises(ClientError):  # the SageMaker model lives only as long as its job
            sm.describe_model(ModelName=job)

        # a part whose output is one line short fails the asset with one line naming job and counts
        failed = materialize(
            assets,
            instance=instance,
            partition_key=batch.partition,
            resources={**resources, "training": ContainerTraining(backend="sagemaker", drop_output_lines=1)},
            selection=[PREDICTIONS],
            raise_on_error=False,
        )
        assert not failed.success
        message = _step_error(failed, "reorder_predictions")
        short = re.fullmatch(
            r"instarec_assets\.backends\.sagemaker\.SageMakerJobError: batch transform (instarec-score-\S+): "
            rf"s3://{aws_locations.curated_bucket}/models/batch-transform/\1/part-00000\.csv\.out "
            r"has (\d+) predictions for (\d+) input rows",
            message,
        )
        assert short is not None, message
        assert (int(short[2]), int(short[3])) == (by_transform.num_rows - 1, by_transform.num_rows)


# ---------------------------------------------------------------- the function, without Dagster
FEATURES = ("times_bought", "reorder_rate", "days_since_last")


@pytest.fixture
def client(aws_env: str) -> SageMakerXGBoost:
    bucket = f"instarec-test-curated-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=aws_env, region_name=REGION).create_bucket(Bucket=bucket)
    settings = SageMakerSettings(
        role_arn=ROLE, bucket=bucket, region=REGION, endpoint_url=aws_env, poll_interval_s=0.01, timeout_s=10
    )
    return SageMakerXGBoost(settings, on_status=Container(aws_env))


def _rows(count: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    rate = rng.random(count)
    rate[rng.random(count) < 0.1] = np.nan
    return pa.table(
        {
            "user_id": rng.integers(1, 50, count),
            "product_id": rng.integers(1, 500, count),
            "order_id": rng.integers(1, 10_000, count),
            "eval_set": rng.choice(["test", "serving"], count),
            "days_since_last": rng.integers(0, 31, count).astype(np.float32),  # columns not in model order
            "reorder_rate": rate,
            "times_bought": rng.integers(1, 40, count),
        }
    )


def _model(client: SageMakerXGBoost) -> tuple[str, xgb.Booster]:
    rng = np.random.default_rng(0)
    features = rng.random((300, len(FEATURES)))
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3},
        xgb.DMatrix(features, label=(features[:, 1] > 0.5).astype(int)),
        num_boost_round=5,
    )
    buffer = io.BytesIO()
    payload = booster.save_raw("ubj")
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("xgboost-model")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(bytes(payload)))
    url = f"s3://{client.settings.bucket}/models/xgboost/instarec-xgb-0/output/model.tar.gz"
    client.s3.put_object(Bucket=client.settings.bucket, Key=url.split("/", 3)[3], Body=buffer.getvalue())
    return url, booster


def test_batches_become_parts_and_predictions_keep_their_rows(client: SageMakerXGBoost, tmp_path: Path):
    url, booster = _model(client)
    table = _rows(2_500, seed=1)
    batches = [*table.to_batches(max_chunksize=1_000), pa.RecordBatch.from_pylist([], schema=table.schema)]
    run = score_with_batch_transform(
        client,
        batches,
        FEATURES,
        url,
        tmp_path / "out" / "p.parquet",
        tmp_path / "work",
        job_name="instarec-score-t1",
    )

    written = pq.read_table(run.staged.path)
    assert written.schema == PREDICTIONS_SCHEMA and run.staged.row_count == written.num_rows == 2_500
    assert run.parts == 3 and run.job_name == "instarec-score-t1"
    for name in ("user_id", "product_id", "order_id", "eval_set"):
        assert written.column(name).to_pylist() == table.column(name).to_pylist()
    matrix = np.column_stack([table.column(name).to_numpy(zero_copy_only=False) for name in FEATURES])
    np.testing.assert_allclose(
        written.column("probability").to_numpy(), booster.predict(xgb.DMatrix(matrix)), rtol=1e-6
    )
    container = client.on_status
    assert [len(part) for part in container.input_parts] == [1_000, 1_000, 500]
    assert all(part.shape[1] == len(FEATURES) for part in container.input_parts)
    assert not (tmp_path / "work" / "instarec-score-t1").exists()  # local CSV and id files are removed
    assert (
        run.as_metadata()["input_uri"] == f"s3://{client.settings.bucket}/sagemaker/instarec-score-t1/input/"
    )


def test_nothing_to_score_writes_an_empty_file_and_starts_no_job(client: SageMakerXGBoost, tmp_path: Path):
    run = score_with_batch_transform(
        client, iter([]), FEATURES, "s3://b/models/m.tar.gz", tmp_path / "p.parquet", tmp_path / "work"
    )
    assert run.job_name == "" and run.staged.row_count == 0
    assert pq.read_table(run.staged.path).schema == PREDICTIONS_SCHEMA
    assert client.on_status.jobs == []


def test_bad_outputs_and_models_fail_in_one_line(client: SageMakerXGBoost, aws_env: str, tmp_path: Path):
    url, _ = _model(client)
    batches = _rows(40, seed=2).to_batches(max_chunksize=25)
    client.on_status = Container(aws_env, drop_output_lines=3)
    with pytest.raises(SageMakerJobError) as raised:
        score_with_batch_transform(
            client,
            batches,
            FEATURES,
            url,
            tmp_path / "p.parquet",
            tmp_path / "work",
            job_name="instarec-score-short",
        )
    assert str(raised.value) == (
        f"batch transform instarec-score-short: s3://{client.settings.bucket}/models/batch-transform/"
        "instarec-score-short/part-00000.csv.out has 22 predictions for 25 input rows"
    )
    with pytest.raises(ClientError):  # the model is removed after a failure too
        client.sagemaker.describe_model(ModelName="instarec-score-short")

    with pytest.raises(SageMakerJobError, match=r"lack column.*times_bought"):
        score_with_batch_transform(
            client,
            _rows(5, 3).drop_columns(["times_bought"]).to_batches(),
            FEATURES,
            url,
            tmp_path / "p.parquet",
            tmp_path / "work",
        )
    with pytest.raises(
        SageMakerJobError, match=r"^model xgboost-x has no sagemaker_model_artifact .*trained in-process"
    ):
        model_data_url({"model_version": "xgboost-x", "features": list(FEATURES)})
    assert model_data_url({"sagemaker_model_artifact": url}) == url
