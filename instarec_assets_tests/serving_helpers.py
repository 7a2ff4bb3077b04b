"""What the serving tests share: one GET through a real server or through the Lambda handler (as the
status and the JSON body), the Lambda's environment over the local SQLite store or over DynamoDB on
the moto server, and a settable clock for the rate limiter.

One copy, so that the ASGI and the Lambda paths are asked the same way in every serving test file.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import boto3
import pytest

from instarec_assets.backends.serving_store import DynamoDbRecommendationStore
from instarec_assets.serving import lambda_function
from instarec_assets.serving.lambda_function import lambda_handler
from instarec_assets.serving.testing import proxy_event
from instarec_assets_tests.aws_fixtures import REGION

Query = list[tuple[str, str]]  # query pairs in order, repeats kept
Answer = tuple[int, dict]  # the status and the JSON body


class FakeClock:
    """A clock for SlidingWindowLimiter that moves only when a test sets `now`."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def http_get(base_url: str, path: str, query: Query, key: str | None) -> Answer:
    """`GET path?query` on a running server with `key` in x-api-key (none when None)."""
    request = urllib.request.Request(
        f"{base_url}{path}?{urlencode(query)}", headers={"x-api-key": key} if key else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def lambda_get(path: str, query: Query, key: str | None) -> Answer:
    """The same GET as an API Gateway proxy event through `lambda_handler`."""
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        grouped.setdefault(name, []).append(value)
    headers = {"x-api-key": [key]} if key else {}
    response = lambda_handler(proxy_event("GET", path=path, query=grouped, headers=headers), None)
    return response["statusCode"], json.loads(response["body"])


@contextmanager
def lambda_over_sqlite(monkeypatch: pytest.MonkeyPatch, key: str) -> Iterator[None]:
    """The Lambda handler in local mode (the store already loaded at INSTAREC_HOME, the `home`
    fixture), one API key, a rate limit no test reaches; built afresh before and after."""
    monkeypatch.setenv("INSTAREC_API_KEYS", key)
    monkeypatch.setenv("INSTAREC_RATE_LIMIT", "1000/300")
    lambda_function.reset()
    try:
        yield
    finally:
        lambda_function.reset()


def dynamodb_store(aws_env: str, name: str) -> DynamoDbRecommendationStore:
    """A new, empty serving table `instarec-test-<name>-<random>` on the moto server."""
    table = f"instarec-test-{name}-{uuid.uuid4().hex[:8]}"
    store = DynamoDbRecommendationStore(table, endpoint_url=aws_env, region_name=REGION)
    store.ensure_table()
    return store


@contextmanager
def lambda_over_dynamodb(
    monkeypatch: pytest.MonkeyPatch,
    aws_env: str,
    home: Path,
    store: DynamoDbRecommendationStore,
    key: str,
    **extra: str,
) -> Iterator[None]:
    """The Lambda handler in aws mode as the serving stack configures it: `store`'s table, `key` in
    an SSM SecureString parameter, the moto endpoint, and any `extra` INSTAREC_* variables."""
    parameter = f"/instarec/test-{uuid.uuid4().hex[:8]}/api-keys"
    boto3.client("ssm", endpoint_url=aws_env, region_name=REGION).put_parameter(
        Name=parameter, Type="SecureString", Value=key
    )
    environment = {
        "INSTAREC_ENV": "aws",
        "INSTAREC_HOME": str(home),
        "INSTAREC_DYNAMODB_TABLE": store.table_name,
        "INSTAREC_API_KEY_PARAMETER": parameter,
        "INSTAREC_AWS_ENDPOINT_URL": aws_env,
        **extra,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    lambda_function.reset()
    try:
        yield
    finally:
        lambda_function.reset()
