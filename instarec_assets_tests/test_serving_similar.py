"""`GET /similar` ("customers also buy") through a real uvicorn server and through the Lambda handler,
over the SQLite store and over DynamoDB on the moto server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from instarec_assets.backends.serving_store import SQLITE_FILE, SqliteRecommendationStore
from instarec_assets.backends.testing import TAG_SCALE, recommendations_table, similar_items_table
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.testing import build_sqlite_store, running_server
from instarec_assets_tests.serving_helpers import (
    Query,
    dynamodb_store,
    http_get,
    lambda_get,
    lambda_over_dynamodb,
    lambda_over_sqlite,
)

KEY = "similar-key-0123456789"
PATH = "/similar"
ORIGIN = "https://recs.example.com"
PRODUCT = TAG_SCALE + 31  # user 3's first recommendation; build_sqlite_store(similar=True) lists 5 for it

Get = Callable[..., tuple[int, dict]]  # get(query pairs, key=KEY) -> (status, JSON body)


def _expected(product_id: int, ranks: range, tag: int = 1) -> list[dict]:
    return [
        {
            "product_id": tag * TAG_SCALE + product_id * 100 + rank,
            "product_name": f"Similar {tag * TAG_SCALE + product_id * 100 + rank}",
            "aisle": f"aisle {rank}",
            "department": f"department {tag}",
            "score": 1.0 / (rank + 1),
        }
        for rank in ranks
    ]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serving-similar")
    return build_sqlite_store(folder / "recommendations.sqlite", users=10, similar=True)


@pytest.fixture(scope="module")
def asgi_get(store_path: Path) -> Iterator[Get]:
    settings = ServingSettings(home=str(store_path.parent), api_keys=(KEY,), rate_limit=10_000)
    api = ServingApi(settings, store=SqliteRecommendationStore(store_path, read_only=True), static=True)
    with running_server(api) as base_url:
        yield lambda query, key=KEY: http_get(base_url, PATH, query, key)


def _lambda_get(query: Query, key: str | None = KEY) -> tuple[int, dict]:
    return lambda_get(PATH, query, key)


@pytest.fixture
def lambda_get_sqlite(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Get]:
    build_sqlite_store(home / SQLITE_FILE, users=10, similar=True)
    with lambda_over_sqlite(monkeypatch, KEY):
        yield _lambda_get


@pytest.fixture(params=["asgi", "lambda"])
def get(request) -> Get:
    return request.getfixturevalue("asgi_get" if request.param == "asgi" else "lambda_get_sqlite")


def test_similar_answers_the_products_similar_items_by_rank(get: Get):
    status, body = get([("product_id", str(PRODUCT)), ("k", "3")])
    assert status == 200
    assert body == {"product_id": PRODUCT, "similar": _expected(PRODUCT, range(1, 4))}
    status, body = get([("product_id", str(PRODUCT))])
    assert status == 200 and body["similar"] == _expected(PRODUCT, range(1, 6))  # k defaults to 5
    assert PRODUCT not in [item["product_id"] for item in body["similar"]]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ([("product_id", "123")], 404, "product 123 has no similar items"),
        ([], 400, "product_id is required"),
        ([("product_id", "0")], 400, "product_id must be a positive integer no greater than 2147483647"),
        ([("product_id", "abc")], 400, "product_id must be a positive integer no greater than 2147483647"),
        (
            [("product_id", "3000000000")],
            400,
            "product_id must be a positive integer no greater than 2147483647",
        ),
        ([("product_id", str(PRODUCT)), ("k", "21")], 400, "k must be an integer from 1 to 20"),
        ([("product_id", str(PRODUCT)), ("k", "0")], 400, "k must be an integer from 1 to 20"),
        ([("product_id", "1"), ("product_id", "2")], 400, "product_id is given more than once"),
        (
            [("product_id", "1"), ("user_id", "2")],
            400,
            "unknown query parameter 'user_id'; expected product_id and optionally k and exclude_departments, exclude_aisles, exclude_products, include_departments",
        ),
    ],
)
def test_similar_refuses_bad_queries_in_one_line_and_unknown_products_with_404(
    get: Get, query, status: int, message: str
):
    assert get(query) == (status, {"error": message})


def test_similar_needs_the_api_key(get: Get):
    assert get([("product_id", str(PRODUCT))], key=None)[0] == 401
    assert get([("product_id", str(PRODUCT))], key="wrong-key-0123456789")[0] == 403


@pytest.mark.aws
def test_lambda_similar_reads_dynamodb(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = dynamodb_store(aws_env, "similar")
    store.load(
        recommendations_table(range(1, 4), tag=2),
        "model-2",
        batch="2025-01-06",
        similar_items=similar_items_table([7, 8], tag=2),
    )
    with lambda_over_dynamodb(monkeypatch, aws_env, tmp_path / "home", store, KEY):
        assert _lambda_get([("product_id", "7"), ("k", "2")]) == (
            200,
            {"product_id": 7, "similar": _expected(7, range(1, 3), tag=2)},
        )
        assert _lambda_get([("product_id", "9")]) == (404, {"error": "product 9 has no similar items"})
        assert _lambda_get([("product_id", "-7")])[0] == 400
