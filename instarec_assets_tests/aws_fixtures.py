"""A moto server on 127.0.0.1 for S3, DynamoDB, SageMaker and SSM (real HTTP from boto3 and s3fs), and
how the SageMaker XGBoost container trains, for the tests that play it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import pytest
import xgboost as xgb
from moto.server import ThreadedMotoServer

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.schemas import ZONES

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials and region for the fake account; nothing here can reach real AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_endpoint


@pytest.fixture
def aws_locations(aws_env: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> LakeLocations:
    """Four fresh zone buckets on the moto server, named as a deployment would name them."""
    suffix = uuid.uuid4().hex[:8]
    buckets = {zone: f"instarec-test-{zone}-{suffix}" for zone in ZONES}
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    settings = {
        "INSTAREC_ENV": "aws",
        "INSTAREC_HOME": str(tmp_path / "home"),
        "INSTAREC_AWS_ENDPOINT_URL": aws_env,
        **{f"INSTAREC_{zone.upper()}_BUCKET": bucket for zone, bucket in buckets.items()},
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return LakeLocations.from_env()


def train_like_the_container(
    hyperparameters: dict[str, str], train: xgb.DMatrix, validation: xgb.DMatrix, save_best: bool = True
) -> xgb.Booster:
    """What the SageMaker XGBoost container (v3.0-5, algorithm_mode/train.py and callback.py) does
    with a training job's hyperparameters: split the comma-separated eval_metric, and
    `xgboost.train` with an EarlyStopping callback on the validation channel's last metric, which
    with `save_best` (the container's choice on a single instance) keeps only the rounds up to the
    best, with the best_iteration and best_score attributes."""
    params = dict(hyperparameters)
    num_round = int(params.pop("num_round"))
    early_stopping_rounds = int(params.pop("early_stopping_rounds"))
    params["eval_metric"] = params["eval_metric"].split(",")
    early_stopping = xgb.callback.EarlyStopping(
        rounds=early_stopping_rounds,
        data_name="validation",
        metric_name=params["eval_metric"][-1],
        save_best=save_best,
    )
    return xgb.train(
        params,
        train,
        num_boost_round=num_round,
        evals=[(train, "train"), (validation, "validation")],
        callbacks=[early_stopping],
        verbose_eval=False,
    )
