"""The cold-start tier served: every item names its `source` (model, explore, popular) through a real
uvicorn server and the Lambda handler, over the SQLite store and over DynamoDB on the moto server;
a filtered cold-start answer still has k items; the stores refuse a bad source in one line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from instarec_assets.backends.serving_store import SQLITE_FILE, ServingStoreError, SqliteRecommendationStore
from instarec_assets.backends.testing import recommendations_table
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.testing import running_server
from instarec_assets_tests.aws_fixtures import REGION
from instarec_assets_tests.serving_helpers import (
    Query,
    dynamodb_store,
    http_get,
    lambda_get,
    lambda_over_dynamodb,
    lambda_over_sqlite,
)

KEY = "cold-start-key-0123456789"
PATH = "/recommendations"
WARM_USERS = range(1, 4)  # 12 ranks each, the last an explore item (recommendations_table)
COLD_USER = 50  # 52 popular items, departments cycling
DEPARTMENTS = ("produce", "dairy eggs", "bakery", "snacks")

Get = Callable[..., tuple[int, dict]]  # get(query pairs) -> (status, JSON body)


def cold_start_table(user_id: int = COLD_USER, ranks: int = 52) -> pa.Table:
    """A cold-start list as the consumption step writes it: popular items by falling popularity."""
    return pa.table(
        {
            "user_id": pa.array([user_id] * ranks, pa.int64()),
            "rank": pa.array(range(1, ranks + 1), pa.int64()),
            "product_id": pa.array([5000 + rank for rank in range(1, ranks + 1)], pa.int64()),
            "product_name": [f"Popular {rank}" for rank in range(1, ranks + 1)],
            "aisle": [f"aisle {rank % 7}" for rank in range(1, ranks + 1)],
            "department": [DEPARTMENTS[rank % len(DEPARTMENTS)] for rank in range(1, ranks + 1)],
            "probability": [0.5 / rank for rank in range(1, ranks + 1)],
            "explore": [False] * ranks,
            "source": ["popular"] * ranks,
            "model_version": ["model-1"] * ranks,
        }
    )


def serving_table() -> pa.Table:
    warm = recommendations_table(WARM_USERS, ranks=12)
    warm = warm.append_column(
        "source", pa.array(["explore" if e else "model" for e in warm["explore"].to_pylist()])
    )
    return pa.concat_tables([warm.select(cold_start_table().column_names), cold_start_table()])


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serving-cold-start") / SQLITE_FILE
    with SqliteRecommendationStore(path) as store:
        store.load(serving_table(), model_version="model-1", batch="2025-01-06")
    return path


@pytest.fixture(scope="module")
def asgi_get(store_path: Path) -> Iterator[Get]:
    settings = ServingSettings(api_keys=(KEY,), rate_limit=10_000)
    api = ServingApi(settings, store=SqliteRecommendationStore(store_path, read_only=True), static=True)
    with running_server(api) as base_url:
        yield lambda query: http_get(base_url, PATH, query, KEY)


def _lambda_get(query: Query) -> tuple[int, dict]:
    return lambda_get(PATH, query, KEY)


@pytest.fixture
def lambda_get_sqlite(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Get]:
    with SqliteRecommendationStore(home / SQLITE_FILE) as store:
        store.load(serving_table(), model_version="model-1", batch="2025-01-06")
    with lambda_over_sqlite(monkeypatch, KEY):
        yield _lambda_get


@pytest.fixture(params=["asgi", "lambda"])
def get(request) -> Get:
    return request.getfixturevalue("asgi_get" if request.param == "asgi" else "lambda_get_sqlite")


def test_a_cold_start_user_gets_popular_items_marked_as_such(get: Get):
    status, body = get([("user_id", str(COLD_USER)), ("k", "10")])
    assert status == 200
    items = body["recommendations"]
    assert [item["product_id"] for item in items] == [5000 + rank for rank in range(1, 11)]
    assert {item["source"] for item in items} == {"popular"}
    assert {item["explore"] for item in items} == {False}  # kept for older clients
    assert list(items[0])[-2:] == ["explore", "source"]


def test_warm_users_items_name_the_model_or_explore(get: Get):
    status, body = get([("user_id", "2"), ("k", "12")])
    assert status == 200
    sources = [(item["source"], item["explore"]) for item in body["recommendations"]]
    assert sources == [("model", False)] * 11 + [("explore", True)]


def test_a_filtered_cold_start_answer_still_has_k_items(get: Get):
    query = [("user_id", str(COLD_USER)), ("k", "10"), ("exclude_departments", "dairy eggs,snacks")]
    status, body = get(query)
    assert status == 200
    items = body["recommendations"]
    assert len(items) == 10
    assert {item["department"] for item in items} == {"produce", "bakery"}
    assert {item["source"] for item in items} == {"popular"}


def test_an_unknown_user_still_gets_404(get: Get):
    assert get([("user_id", "999")]) == (404, {"error": "user 999 has no recommendations"})


@pytest.mark.aws
def test_lambda_serves_the_popular_tier_from_dynamodb(
    aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    store = dynamodb_store(aws_env, "cold")
    report = store.load(serving_table(), "model-1", batch="2025-01-06")
    assert report.as_metadata()["max_item_bytes"] < 400_000
    with lambda_over_dynamodb(monkeypatch, aws_env, tmp_path / "home", store, KEY):
        status, body = _lambda_get(
            [("user_id", str(COLD_USER)), ("k", "4"), ("exclude_departments", "dairy eggs")]
        )
        assert status == 200
        assert [item["product_id"] for item in body["recommendations"]] == [
            5002,
            5003,
            5004,
            5006,
        ]  # 5001, 5005: dairy eggs
        assert {item["source"] for item in body["recommendations"]} == {"popular"}
        status, body = _lambda_get([("user_id", "1"), ("k", "12")])
        assert [item["source"] for item in body["recommendations"]][-2:] == ["model", "explore"]
        assert _lambda_get([("user_id", "999")])[0] == 404


@pytest.mark.aws
def test_a_dynamodb_item_written_before_sources_reads_as_model_or_explore(aws_env: str):
    store = dynamodb_store(aws_env, "cold")
    report = store.load(recommendations_table([7], ranks=2), "model-1", batch="2025-01-06")
    old = [
        {"rank": rank, "product_id": rank, "product_name": "p", "aisle": "a", "department": "d",
         "probability": 0.5, "explore": rank == 2}
        for rank in (1, 2)
    ]  # fmt: skip
    boto3.client("dynamodb", endpoint_url=aws_env, region_name=REGION).update_item(
        TableName=store.table_name,
        Key={"user_id": {"N": "7"}, "version": {"S": report.version}},
        UpdateExpression="SET recommendations = :list",
        ExpressionAttributeValues={":list": {"S": json.dumps(old)}},
    )
    assert [(item.explore, item.source) for item in store.top_k(7, 2).items] == [
        (False, "model"),
        (True, "explore"),
    ]


def test_sqlite_keeps_the_source_of_each_item(store_path: Path):
    with SqliteRecommendationStore(store_path, read_only=True) as store:
        assert {item.source for item in store.top_k(COLD_USER, 52).items} == {"popular"}
        assert [item.source for item in store.top_k(1, 12).items] == ["model"] * 11 + ["explore"]
        assert store.top_k(COLD_USER, 1).to_dict()["recommendations"][0]["source"] == "popular"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"source": "trending"},
            "recommendations column source must be one of model, explore, popular; found 'trending'",
        ),
        (
            {"explore": True},
            "recommendations column explore must be true exactly when source is explore; "
            "found a 'popular' row with explore = True",
        ),
    ],
)
def test_a_bad_source_is_refused_in_one_line(tmp_path: Path, change: dict, message: str):
    table = cold_start_table(ranks=2)
    for name, value in change.items():
        index = table.column_names.index(name)
        table = table.set_column(index, name, pa.array([value] * table.num_rows))
    with (
        SqliteRecommendationStore(tmp_path / SQLITE_FILE) as store,
        pytest.raises(ServingStoreError) as error,
    ):
        store.load(table, "model-1", batch="2025-01-06")
    assert str(error.value) == message


@pytest.mark.parametrize("source", ["missing", "null"])
def test_a_missing_or_null_source_follows_the_explore_flag(tmp_path: Path, source: str):
    table = recommendations_table([8], ranks=3)  # the last rank is an explore item
    if source == "null":
        table = table.append_column("source", pa.array([None, None, None], pa.string()))
    with SqliteRecommendationStore(tmp_path / SQLITE_FILE) as store:
        store.load(table, "model-1", batch="2025-01-06")
        assert [item.source for item in store.top_k(8, 3).items] == ["model", "model", "explore"]
