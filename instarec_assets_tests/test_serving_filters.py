"""Request filters and configured business rules on /recommendations and /similar, through a real
uvicorn server and through the Lambda handler (SQLite store, and DynamoDB on the moto server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from instarec_assets.backends.serving_store import SQLITE_FILE, SqliteRecommendationStore
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.settings import ServingConfigError
from instarec_assets.serving.testing import running_server
from instarec_assets_tests.serving_helpers import (
    Query,
    dynamodb_store,
    http_get,
    lambda_over_dynamodb,
    lambda_over_sqlite,
)
from instarec_assets_tests.serving_helpers import lambda_get as lambda_get_with_key

KEY = "filter-key-0123456789"
DEPARTMENTS = ("produce", "dairy eggs", "snacks", "alcohol")
USER = 1
ANCHOR = 500  # the product whose similar items the tests filter


def department_of(product_id: int) -> str:
    return DEPARTMENTS[product_id % 4]


def aisle_of(product_id: int) -> str:
    return f"aisle {product_id % 3}"


def _recommendations() -> pa.Table:
    """User 1: products 101..112 at ranks 1..12 (the last two explore items), departments cycling."""
    products = list(range(101, 113))
    return pa.table(
        {
            "user_id": [USER] * 12,
            "rank": list(range(1, 13)),
            "product_id": products,
            "product_name": [f"Product {p}" for p in products],
            "aisle": [aisle_of(p) for p in products],
            "department": [department_of(p).title() if p == 103 else department_of(p) for p in products],
            "probability": [1.0 - rank / 20 for rank in range(1, 13)],
            "explore": [rank > 10 for rank in range(1, 13)],
        }
    )


def _similar() -> pa.Table:
    products = list(range(201, 211))
    return pa.table(
        {
            "product_id": [ANCHOR] * 10,
            "rank": list(range(1, 11)),
            "similar_product_id": products,
            "product_name": [f"Product {p}" for p in products],
            "aisle": [aisle_of(p) for p in products],
            "department": [department_of(p) for p in products],
            "score": [1.0 / rank for rank in range(1, 11)],
        }
    )


def load(store) -> None:
    store.load(_recommendations(), "model-f", batch="2025-01-06", similar_items=_similar())


def ids(products: range | list[int], keep: Callable[[int], bool], k: int) -> list[int]:
    return [p for p in products if keep(p)][:k]


Get = Callable[[str, list[tuple[str, str]]], tuple[int, dict]]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serving-filters") / "recommendations.sqlite"
    with SqliteRecommendationStore(path) as store:
        load(store)
    return path


@pytest.fixture(scope="module")
def asgi_get(store_path: Path) -> Iterator[Get]:
    settings = ServingSettings(api_keys=(KEY,), rate_limit=10_000)
    api = ServingApi(settings, store=SqliteRecommendationStore(store_path, read_only=True))
    with running_server(api) as base_url:
        yield lambda path, query: http_get(base_url, path, query, KEY)


def lambda_get(path: str, query: Query) -> tuple[int, dict]:
    return lambda_get_with_key(path, query, KEY)


@pytest.fixture
def lambda_sqlite(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Get]:
    with SqliteRecommendationStore(home / SQLITE_FILE) as store:
        load(store)
    with lambda_over_sqlite(monkeypatch, KEY):
        yield lambda_get


@pytest.fixture(params=["asgi", "lambda"])
def get(request) -> Get:
    return request.getfixturevalue("asgi_get" if request.param == "asgi" else "lambda_sqlite")


def served(get: Get, query: list[tuple[str, str]]) -> list[int]:
    status, body = get("/recommendations", [("user_id", str(USER)), *query])
    assert status == 200, body
    return [item["product_id"] for item in body["recommendations"]]


def similar(get: Get, query: list[tuple[str, str]]) -> list[int]:
    status, body = get("/similar", [("product_id", str(ANCHOR)), *query])
    assert status == 200, body
    return [item["product_id"] for item in body["similar"]]


def test_exclusions_and_inclusions_filter_the_candidates_and_still_fill_k(get: Get):
    every = range(101, 113)
    assert served(get, [("k", "5"), ("exclude_departments", "snacks,ALCOHOL")]) == ids(
        every, lambda p: department_of(p) not in ("snacks", "alcohol"), 5
    )
    # names compare case-insensitively: product 103's department is stored as "Alcohol"
    assert served(get, [("k", "3"), ("include_departments", "Dairy Eggs")]) == [101, 105, 109]
    assert served(get, [("k", "4"), ("exclude_products", "101,102,104")]) == [103, 105, 106, 107]
    assert served(get, [("k", "20"), ("exclude_aisles", "aisle 0,aisle 1")]) == ids(
        every, lambda p: p % 3 == 2, 20
    )
    assert served(get, [("k", "3"), ("include_departments", "produce"), ("exclude_products", "104")]) == [
        108,
        112,
    ]  # fewer than k when too few candidates pass
    assert served(get, [("include_departments", "frozen")]) == []  # a known user, nothing allowed


def test_similar_items_take_the_same_filters(get: Get):
    assert similar(get, [("k", "3"), ("exclude_departments", "produce,snacks")]) == [201, 203, 205]
    assert similar(get, [("include_departments", "alcohol")]) == [203, 207]
    assert similar(get, [("k", "2"), ("exclude_products", "201,202")]) == [203, 204]


@pytest.mark.parametrize("path", ["/recommendations", "/similar"])
@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            [("exclude_products", "12,abc")],
            "exclude_products must list product ids (positive integers up to 2147483647); 'abc' is not one",
        ),
        (
            [("exclude_products", "0")],
            "exclude_products must list product ids (positive integers up to 2147483647); '0' is not one",
        ),
        (
            [("exclude_departments", "")],
            "exclude_departments must be comma-separated values without empty entries",
        ),
        ([("exclude_aisles", "a,,b")], "exclude_aisles must be comma-separated values without empty entries"),
        (
            [("include_departments", ",".join(f"d{n}" for n in range(51)))],
            "include_departments holds 51 values; at most 50 are accepted",
        ),
        (
            [("exclude_departments", "x" * 101)],
            "exclude_departments values must be printable names of at most 100 characters",
        ),
        (
            [("exclude_departments", "a"), ("exclude_departments", "b")],
            "exclude_departments is given more than once",
        ),
    ],
)
def test_bad_filter_values_are_one_line_400s_naming_the_parameter(get: Get, path: str, query, message: str):
    anchor = ("user_id", str(USER)) if path == "/recommendations" else ("product_id", str(ANCHOR))
    assert get(path, [anchor, *query]) == (400, {"error": message})


def test_configured_rules_apply_to_every_response(home: Path, monkeypatch: pytest.MonkeyPatch):
    with SqliteRecommendationStore(home / SQLITE_FILE) as store:
        load(store)
    monkeypatch.setenv("INSTAREC_SERVING_EXCLUDE_DEPARTMENTS", "alcohol")
    monkeypatch.setenv("INSTAREC_SERVING_EXCLUDE_PRODUCTS", "101")
    no_alcohol = ids(range(102, 113), lambda p: department_of(p) != "alcohol", 20)
    with lambda_over_sqlite(monkeypatch, KEY):
        assert served(lambda_get, [("k", "20")]) == no_alcohol
        assert served(lambda_get, [("k", "2"), ("exclude_departments", "produce")]) == [102, 105]
        assert similar(lambda_get, [("k", "20")]) == ids(
            range(201, 211), lambda p: department_of(p) != "alcohol", 20
        )
    # the ASGI fast path (`user_id=N&k=M`, no filters in the query) applies them too
    api = ServingApi(
        ServingSettings.from_env(), store=SqliteRecommendationStore(home / SQLITE_FILE, read_only=True)
    )
    with running_server(api) as base_url:
        status, body = http_get(base_url, "/recommendations", [("user_id", "1"), ("k", "20")], KEY)
    assert status == 200, body
    assert [item["product_id"] for item in body["recommendations"]] == no_alcohol


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "INSTAREC_SERVING_EXCLUDE_PRODUCTS",
            "12,x",
            "INSTAREC_SERVING_EXCLUDE_PRODUCTS must list product ids (positive integers up to 2147483647); "
            "'x' is not one",
        ),
        (
            "INSTAREC_SERVING_EXCLUDE_AISLES",
            "a,,b",
            "INSTAREC_SERVING_EXCLUDE_AISLES must be comma-separated values without empty entries",
        ),
    ],
)
def test_a_bad_rule_in_the_configuration_is_one_line_naming_the_variable(name: str, value: str, message: str):
    with pytest.raises(ServingConfigError) as raised:
        ServingSettings.from_env({name: value})
    assert str(raised.value) == message
    assert ServingSettings.from_env({name: "  "}).rules.exclude_products == frozenset()


@pytest.mark.aws
def test_lambda_filters_over_dynamodb(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = dynamodb_store(aws_env, "filters")
    load(store)
    home = tmp_path / "home"
    with lambda_over_dynamodb(
        monkeypatch, aws_env, home, store, KEY, INSTAREC_SERVING_EXCLUDE_DEPARTMENTS="snacks"
    ):
        assert served(lambda_get, [("k", "4"), ("exclude_products", "101")]) == [103, 104, 105, 107]
        assert similar(lambda_get, [("include_departments", "produce,snacks")]) == [204, 208]
        assert lambda_get("/recommendations", [("user_id", "1"), ("exclude_aisles", "")])[0] == 400
