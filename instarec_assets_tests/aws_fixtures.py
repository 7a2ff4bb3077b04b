"""A moto server on 127.0.0.1 for S3 (and later DynamoDB and SageMaker): real HTTP from boto3 and s3fs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import pytest
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
