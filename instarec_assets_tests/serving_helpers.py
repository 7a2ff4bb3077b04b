"""What the serving tests share: one GET through a real server or through the Lambda handler (as the
status and the JSON body), the Lambda's environment over the local SQLite store or over DynamoDB on
the moto server, and a settable clock for the rate limiter.

One copy, so that the ASGI and the Lambda paths are asked the same way in every serving test file,
and the SQLite and DynamoDB stores are held to the same "never a half-loaded version" check.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import boto3
import pytest

from instarec_assets.backends.serving_store import DynamoDbRecommendationStore
from instarec_assets.backends.testing import tag_of
from instarec_assets.serving import lambda_function
from instarec_assets.serving.lambda_function import lambda_handler
from instarec_assets.serving.testing import proxy_event
from instarec_assets_tests.aws_fixtures import REGION

Query = list[tuple[str, str]]  # query pairs in order, repeats kept
Answer = tuple[int, dict]  # the status and the JSON body
T = TypeVar("T")


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


@dataclass
class SwitchWatch:
    """What reader threads saw while a load switched versions: per reader the (time, tag) of every
    complete list read, and a line for every missing or mixed one."""

    observations: list[list[tuple[float, int]]]
    errors: list[str] = field(default_factory=list)
    load_started: float = 0.0
    load_ended: float = 0.0

    def assert_old_then_new_only(self) -> None:
        """No list missing or mixed, reads during the load, and each reader saw tag 1 then only tag 2."""
        assert self.errors == []
        during = [
            tag
            for reads in self.observations
            for at, tag in reads
            if self.load_started <= at <= self.load_ended
        ]
        assert len(during) > 10, "the readers did not overlap the load"
        for reads in self.observations:
            tags = [tag for _, tag in reads]
            assert tags[0] == 1 and tags[-1] == 2  # each reader saw the old version, then the new one
            assert set(tags[tags.index(2) :]) == {2}  # and never went back


def read_while_loading(
    readers: Sequence,
    users: Sequence[int],
    load: Callable[[], T],
    *,
    start_after_s: float = 0.05,
    until: Callable[[list[list[tuple[float, int]]]], bool] | None = None,
    end_after_s: float = 0.1,
) -> tuple[T, SwitchWatch]:
    """One thread per entry of `readers` reads random `users`' top 10 in a loop while `load()` runs
    (lists of `recommendations_table`: one tag, ranks 1..10, model_version `model-<tag>`); after it,
    reading goes on until `until(observations)` (15 s at most) and `end_after_s` more. Returns what
    `load` returned and what the readers saw."""
    watch = SwitchWatch(observations=[[] for _ in readers])
    stop = threading.Event()
    started = threading.Barrier(len(readers) + 1)

    def read(slot: int) -> None:
        rng = random.Random(slot)
        started.wait()
        while not stop.is_set():
            user = rng.choice(users)
            result = readers[slot].top_k(user, 10)
            if result is None:
                watch.errors.append(f"reader {slot}: user {user} missing")
                continue
            tags = {tag_of(item.product_id) for item in result.items}
            ranks = [item.rank for item in result.items]
            if len(tags) != 1 or ranks != list(range(1, 11)) or result.model_version != f"model-{min(tags)}":
                watch.errors.append(
                    f"reader {slot}: user {user}: tags {tags}, ranks {ranks}, {result.model_version}"
                )
                continue
            watch.observations[slot].append((time.perf_counter(), tags.pop()))

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(len(readers))]
    for thread in threads:
        thread.start()
    try:
        started.wait()
        time.sleep(start_after_s)
        watch.load_started = time.perf_counter()
        loaded = load()
        watch.load_ended = time.perf_counter()
        deadline = time.monotonic() + 15
        while until is not None and time.monotonic() < deadline and not until(watch.observations):
            time.sleep(0.05)
        time.sleep(end_after_s)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return loaded, watch
