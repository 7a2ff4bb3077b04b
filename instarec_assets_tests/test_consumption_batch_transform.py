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
from moto.core import DEFAULT_ACCOUNT_ID

from instarec_assets.backends.sagemaker import SageMakerJobError, SageMakerSettings, SageMakerXGBoost
from instarec_assets.consumption.batch_transform import (
    model_data_url,
    score_with_batch_transform,
)
from instarec_assets.consumption.recommendations import PREDICTIONS_SCHEMA
from instarec_assets_tests.aws_fixtures import REGION

pytestmark = pytest.mark.aws
ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/instarec-test-sagemaker-execution"


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
        params = dict(description["HyperParameters"])
        rounds, patience = int(params.pop("num_round")), int(params.pop("early_stopping_rounds"))
        validation = self._channel(description, "validation")
        booster = xgb.train(
            params,
            self._channel(description, "train"),
            num_boost_round=rounds,
            evals=[(validation, "validation")],
            early_stopping_rounds=patience,
            verbose_eval=False,
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
