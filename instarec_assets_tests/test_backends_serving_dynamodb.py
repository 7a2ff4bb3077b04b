"""The DynamoDB serving store against the moto server on 127.0.0.1 (real HTTP, boto3 with endpoint_url)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import boto3
import pyarrow as pa
import pytest

from instarec_assets.backends.serving_store import (
    DynamoDbRecommendationStore,
    Recommendation,
    RecommendationStore,
    ServingStoreError,
)
from instarec_assets.backends.testing import recommendations_table, tag_of
from instarec_assets_tests.aws_fixtures import REGION

pytestmark = pytest.mark.aws


@pytest.fixture
def table_name() -> str:
    return f"instarec-test-recommendations-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(aws_env: str, table_name: str) -> DynamoDbRecommendationStore:
    created = DynamoDbRecommendationStore(table_name, endpoint_url=aws_env, region_name=REGION)
    assert created.ensure_table() is True
    return created


def _client(endpoint: str):
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)


def test_ensure_table_creates_the_stacks_key_schema_once(aws_env: str, store: DynamoDbRecommendationStore):
    assert store.ensure_table() is False
    table = _client(aws_env).describe_table(TableName=store.table_name)["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {
        ("user_id", "HASH"),
        ("version", "RANGE"),
    }
    assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {
        ("user_id", "N"),
        ("version", "S"),
    }
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_writes_retry_throttling_adaptively():
    store = DynamoDbRecommendationStore("any", region_name=REGION, endpoint_url="http://127.0.0.1:9")
    # botocore counts Config(retries={"max_attempts": 10}) as 10 retries after the first attempt
    adaptive = {"mode": "adaptive", "total_max_attempts": 11}
    assert store._write_client.meta.config.retries == adaptive
    assert store._resource.meta.client.meta.config.retries == adaptive
    assert store._client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}


def test_load_then_top_k_returns_exact_items_by_rank(aws_env: str, store: DynamoDbRecommendationStore):
    assert isinstance(store, RecommendationStore)
    assert store.current_version() is None
    assert store.top_k(7, 10) is None
    rows = pa.table(
        {
            "user_id": [7, 7, 9, 7],
            "rank": [2, 1, 1, 3],
            "product_id": [13176, 24852, 21137, 47209],
            "product_name": [
                "Bag of Organic Bananas",
                "Banana",
                "Organic Strawberries",
                "Hass Avocado · Größe L",
            ],
            "aisle": ["fresh fruits"] * 4,
            "department": ["produce"] * 4,
            "probability": [0.612345678901234, 0.7310585786300049, 0.25, 0.1],
            "explore": [False, False, False, True],
        }
    )

    report = store.load(rows, "xgb-2025-01-06")

    assert (report.users, report.rows, report.previous_version) == (2, 4, None)
    assert store.current_version() == report.version
    result = store.top_k(7, 10)
    assert (result.user_id, result.model_version, result.version) == (7, "xgb-2025-01-06", report.version)
    assert result.items == (
        Recommendation(1, 24852, "Banana", "fresh fruits", "produce", 0.7310585786300049, False),
        Recommendation(
            2, 13176, "Bag of Organic Bananas", "fresh fruits", "produce", 0.612345678901234, False
        ),
        Recommendation(3, 47209, "Hass Avocado · Größe L", "fresh fruits", "produce", 0.1, True),
    )
    assert [item.rank for item in store.top_k(7, 2).items] == [1, 2]
    assert store.top_k(8, 10) is None
    assert store.top_k(0, 10) is None  # the pointer item is not a user

    client = _client(aws_env)
    pointer = client.get_item(
        TableName=store.table_name,
        Key={"user_id": {"N": "0"}, "version": {"S": "CURRENT"}},
        ConsistentRead=True,
    )["Item"]
    assert pointer["current_version"] == {"S": report.version}
    assert pointer["model_version"] == {"S": "xgb-2025-01-06"}
    item = client.get_item(
        TableName=store.table_name, Key={"user_id": {"N": "9"}, "version": {"S": report.version}}
    )["Item"]
    assert json.loads(item["recommendations"]["S"]) == [
        {
            "rank": 1,
            "product_id": 21137,
            "product_name": "Organic Strawberries",
            "aisle": "fresh fruits",
            "department": "produce",
            "probability": 0.25,
            "explore": False,
        }
    ]


def test_second_load_switches_and_removes_every_item_of_the_old_version(
    aws_env: str, store: DynamoDbRecommendationStore
):
    first = store.load(recommendations_table(range(1, 51), tag=1), "model-1")
    second = store.load(recommendations_table(range(21, 81), tag=2), "model-2")

    assert second.previous_version == first.version
    assert second.removed_versions == (first.version,)
    assert second.removed_items == 50
    assert store.stored_versions() == {second.version: 60}  # no item of the old version remains
    old_items = _client(aws_env).scan(
        TableName=store.table_name,
        FilterExpression="#v = :old",
        ExpressionAttributeNames={"#v": "version"},
        ExpressionAttributeValues={":old": {"S": first.version}},
    )["Items"]
    assert old_items == []
    assert store.top_k(10, 10) is None
    assert {tag_of(item.product_id) for item in store.top_k(30, 10).items} == {2}
    other_reader = DynamoDbRecommendationStore(store.table_name, endpoint_url=aws_env, region_name=REGION)
    assert other_reader.top_k(30, 3).model_version == "model-2"


def test_readers_never_see_a_half_loaded_version(aws_env: str, store: DynamoDbRecommendationStore):
    """While a larger load runs, readers get complete old or complete new lists, never a missing user.

    One reader reads the pointer on every request; the other caches it for 60 s, so it keeps asking
    for the old version after the switch, meets the deleted items and can only reach the new version
    through the miss -> re-read pointer path.
    """
    old_users = range(1, 301)
    store.load(recommendations_table(old_users, tag=1), "model-1")
    readers = [
        DynamoDbRecommendationStore(
            store.table_name, endpoint_url=aws_env, region_name=REGION, pointer_ttl_s=0
        ),
        DynamoDbRecommendationStore(
            store.table_name, endpoint_url=aws_env, region_name=REGION, pointer_ttl_s=60
        ),
    ]
    stop = threading.Event()
    started = threading.Barrier(3)
    observations: list[list[tuple[float, int]]] = [[], []]
    errors: list[str] = []

    def read(slot: int) -> None:
        rng = random.Random(slot)
        started.wait()
        while not stop.is_set():
            user = rng.choice(old_users)
            result = readers[slot].top_k(user, 10)
            if result is None:
                errors.append(f"reader {slot}: user {user} missing")
                continue
            tags = {tag_of(item.product_id) for item in result.items}
            ranks = [item.rank for item in result.items]
            if len(tags) != 1 or ranks != list(range(1, 11)) or result.model_version != f"model-{min(tags)}":
                errors.append(f"reader {slot}: user {user}: tags {tags}, ranks {ranks}")
                continue
            observations[slot].append((time.perf_counter(), tags.pop()))

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.1)
    load_started = time.perf_counter()
    report = store.load(recommendations_table(range(1, 1201), tag=2), "model-2")
    load_ended = time.perf_counter()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (observations[1] and observations[1][-1][1] == 2):
        time.sleep(0.05)  # until the caching reader has moved to the new version
    time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()

    assert errors == []
    assert report.removed_items == 300
    during = [tag for reads in observations for at, tag in reads if load_started <= at <= load_ended]
    assert len(during) > 10, "the readers did not overlap the load"
    for reads in observations:
        tags = [tag for _, tag in reads]
        assert tags[0] == 1 and tags[-1] == 2
        assert set(tags[tags.index(2) :]) == {2}  # never back to the old version
    assert store.stored_versions() == {report.version: 1200}


def test_a_concurrent_switch_makes_the_later_load_fail_and_clean_up(
    aws_env: str, store: DynamoDbRecommendationStore
):
    """Load A is overtaken by load B mid-way: A's conditional pointer write fails; B stays current."""
    first = store.load(recommendations_table(range(1, 11), tag=1), "model-1")
    other = DynamoDbRecommendationStore(store.table_name, endpoint_url=aws_env, region_name=REGION)
    overtaking = {}

    def batches_of_a():
        yield recommendations_table(range(1, 600), tag=2)
        overtaking["report"] = other.load(recommendations_table(range(1, 21), tag=3), "model-3")
        yield recommendations_table(range(600, 1200), tag=2)

    with pytest.raises(ServingStoreError, match="another load switched"):
        store.load(batches_of_a(), "model-2")

    winner = overtaking["report"]
    assert winner.previous_version == first.version
    assert store.current_version() == winner.version
    assert store.stored_versions() == {winner.version: 20}  # A's items were removed, B's are intact
    assert store.top_k(5, 10).model_version == "model-3"


def test_a_load_failing_mid_way_discards_its_items(store: DynamoDbRecommendationStore):
    first = store.load(recommendations_table(range(1, 11), tag=1), "model-1")

    def batches():
        yield recommendations_table(range(1, 700), tag=2)
        yield recommendations_table(range(5, 8), tag=2).drop_columns(["aisle"])

    with pytest.raises(ServingStoreError, match="missing column"):
        store.load(batches(), "model-2")
    assert store.current_version() == first.version
    assert store.stored_versions() == {first.version: 10}
    with pytest.raises(ServingStoreError, match="no recommendations"):
        store.load(recommendations_table([], tag=2), "model-2")


@pytest.mark.slow
def test_ten_thousand_users_load(store: DynamoDbRecommendationStore):
    """10k users in 400 BatchWriteItem calls; the bound is generous because moto, not DynamoDB, is timed."""
    report = store.load(recommendations_table(range(1, 10001), tag=1), "model-1")
    assert (report.users, report.rows) == (10000, 100000)
    assert report.extra["max_item_bytes"] < 4096  # half a read unit per eventually consistent GetItem
    assert report.write_seconds < 60, report.as_metadata()
    assert store.top_k(9999, 10).items[-1].rank == 10
