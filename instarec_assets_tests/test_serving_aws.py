"""aws mode against the moto server: DynamoDB store, API keys from SSM, the Lambda runtime's libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from instarec_assets.backends.serving_store import DynamoDbRecommendationStore
from instarec_assets.backends.testing import recommendations_table
from instarec_assets.serving import ServingApi, ServingSettings, lambda_function
from instarec_assets.serving.keys import KeysUnavailableError, SsmKeys
from instarec_assets.serving.lambda_function import lambda_handler
from instarec_assets.serving.testing import proxy_event
from instarec_assets_tests.aws_fixtures import REGION
from instarec_assets_tests.serving_helpers import FakeClock

pytestmark = pytest.mark.aws

REPO_ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "https://recs.example.com"


@pytest.fixture
def ssm(aws_env: str):
    return boto3.client("ssm", endpoint_url=aws_env, region_name=REGION)


@pytest.fixture
def parameter(ssm) -> str:
    name = f"/instarec/test-{uuid.uuid4().hex[:8]}/api-keys"
    ssm.put_parameter(Name=name, Type="SecureString", Value="aws-key-1,aws-key-2")
    return name


@pytest.fixture
def aws_serving(aws_env: str, parameter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """aws-mode environment as the serving stack sets it for the Lambda, with a loaded table."""
    table = f"instarec-test-recommendations-{uuid.uuid4().hex[:8]}"
    store = DynamoDbRecommendationStore(table, endpoint_url=aws_env, region_name=REGION)
    store.ensure_table()
    store.load(recommendations_table(range(1, 31), tag=2), model_version="model-2", batch="2025-01-06")
    settings = {
        "INSTAREC_ENV": "aws",
        "INSTAREC_HOME": str(tmp_path / "home"),
        "INSTAREC_DYNAMODB_TABLE": table,
        "INSTAREC_API_KEY_PARAMETER": parameter,
        "INSTAREC_ALLOWED_ORIGIN": ORIGIN,
        "INSTAREC_AWS_ENDPOINT_URL": aws_env,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    lambda_function.reset()
    yield settings
    lambda_function.reset()


def request(user_id: str = "5", key: str = "aws-key-1", **kwargs) -> dict:
    headers = {"x-api-key": [key], "Origin": [ORIGIN]} if key else {"Origin": [ORIGIN]}
    return lambda_handler(proxy_event("GET", query={"user_id": [user_id], **kwargs}, headers=headers), None)


def test_lambda_reads_dynamodb_with_keys_from_ssm(aws_serving: dict):
    response = request("5", k=["4"])
    assert response["statusCode"] == 200, response
    payload = json.loads(response["body"])
    assert payload["user_id"] == 5
    assert payload["model_version"] == "model-2"
    assert [item["rank"] for item in payload["recommendations"]] == [1, 2, 3, 4]
    assert payload["recommendations"][0]["product_id"] == 2_000_000_051
    assert response["headers"]["access-control-allow-origin"] == ORIGIN
    assert request("5", key="aws-key-2")["statusCode"] == 200
    assert request("5", key="")["statusCode"] == 401
    assert request("5", key="aws-key-3")["statusCode"] == 403
    assert request("31")["statusCode"] == 404
    assert request("0")["statusCode"] == 400
    assert request("2147483647")["statusCode"] == 404


def test_lambda_preflight_in_aws_mode(aws_serving: dict):
    response = lambda_handler(proxy_event("OPTIONS", headers={"Origin": [ORIGIN]}), None)
    assert response["statusCode"] == 204
    assert response["headers"]["access-control-allow-origin"] == ORIGIN


def test_ssm_keys_are_cached_then_refreshed(aws_env: str, ssm, parameter: str):
    clock = FakeClock(100.0)
    keys = SsmKeys(parameter, ttl_s=300, region=REGION, endpoint_url=aws_env, clock=clock)
    first = keys.digests()
    assert len(first) == 2
    assert keys.first_key() == "aws-key-1"
    ssm.put_parameter(Name=parameter, Type="SecureString", Value="rotated-key", Overwrite=True)
    clock.now += 299
    assert keys.digests() == first  # cached: one SSM call per 5 minutes
    clock.now += 2
    assert keys.first_key() == "rotated-key"
    ssm.delete_parameter(Name=parameter)
    clock.now += 301
    assert keys.first_key() == "rotated-key"  # a failed refresh keeps the previous keys


def test_unreadable_ssm_parameter_is_503(aws_serving: dict, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INSTAREC_API_KEY_PARAMETER", "/instarec/absent/api-keys")
    lambda_function.reset()
    response = request("5")
    assert response["statusCode"] == 503
    assert json.loads(response["body"]) == {"error": "the service is temporarily unavailable"}
    with pytest.raises(KeysUnavailableError):
        SsmKeys(
            "/instarec/absent/api-keys", region=REGION, endpoint_url=aws_serving["INSTAREC_AWS_ENDPOINT_URL"]
        ).digests()


def test_ssm_keys_are_decrypted(aws_env: str, parameter: str):
    settings = ServingSettings.from_env(
        {"INSTAREC_ENV": "aws", "INSTAREC_API_KEY_PARAMETER": parameter, "INSTAREC_AWS_ENDPOINT_URL": aws_env}
    )
    api = ServingApi(settings, store=object())
    assert isinstance(api.keys, SsmKeys)
    assert api.keys.first_key() == "aws-key-1"  # not the ciphertext


def test_handler_runs_with_only_the_lambda_runtimes_libraries(aws_serving: dict):
    """What infra/scripts/package_lambda.sh ships: this package plus the standard library and boto3.

    numpy, pyarrow, pandas, Dagster, DuckDB and uvicorn are made unimportable in a fresh interpreter,
    which then answers real requests through lambda_handler against DynamoDB and SSM.
    """
    code = """
import importlib.abc, json, sys

BLOCKED = {"numpy", "pyarrow", "pandas", "dagster", "duckdb", "uvicorn", "starlette", "moto"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the Lambda runtime")
        return None

sys.meta_path.insert(0, Block())
from instarec_assets.serving import lambda_handler
from instarec_assets.serving.testing import proxy_event

answers = []
for user_id in ("5", "31", "x"):
    event = proxy_event("GET", query={"user_id": [user_id]}, headers={"x-api-key": ["aws-key-1"]})
    response = lambda_handler(event, None)
    answers.append([response["statusCode"], json.loads(response["body"])])
print(json.dumps(answers))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert [status for status, _ in answers] == [200, 404, 400], f"{answers}\n{done.stderr[-3000:]}"
    assert answers[0][1]["model_version"] == "model-2"
