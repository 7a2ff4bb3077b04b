"""`lambda_handler` with API Gateway REST proxy events, reading the local SQLite store."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from instarec_assets.backends.serving_store import SQLITE_FILE
from instarec_assets.serving import lambda_function
from instarec_assets.serving.lambda_function import lambda_handler
from instarec_assets.serving.testing import build_sqlite_store, proxy_event
from instarec_assets_tests.serving_helpers import lambda_over_sqlite

KEY = "lambda-key-123"
ORIGIN = "https://recs.example.com"


@pytest.fixture
def lambda_env(home: Path, monkeypatch: pytest.MonkeyPatch):
    build_sqlite_store(home / SQLITE_FILE, users=20)
    monkeypatch.setenv("INSTAREC_ALLOWED_ORIGIN", ORIGIN)
    with lambda_over_sqlite(monkeypatch, KEY):
        yield home


def get(user_id: str = "3", headers=None, **kwargs):
    sent = {"x-api-key": [KEY]} if headers is None else headers
    return lambda_handler(proxy_event("GET", query={"user_id": [user_id]}, headers=sent, **kwargs), None)


def test_get_event(lambda_env: Path):
    event = proxy_event(
        "GET",
        query={"user_id": ["3"], "k": ["2"]},
        headers={"X-Api-Key": [KEY], "Origin": [ORIGIN], "Accept": ["application/json"]},
    )
    response = lambda_handler(event, None)
    assert response["statusCode"] == 200
    assert response["isBase64Encoded"] is False
    assert isinstance(response["body"], str)
    assert response["headers"]["content-type"] == "application/json"
    assert response["headers"]["access-control-allow-origin"] == ORIGIN
    assert response["headers"]["vary"] == "Origin"
    payload = json.loads(response["body"])
    assert payload["user_id"] == 3
    assert payload["model_version"] == "model-1"
    assert [item["rank"] for item in payload["recommendations"]] == [1, 2]


def test_options_event(lambda_env: Path):
    event = proxy_event(
        "OPTIONS",
        headers={
            "Origin": [ORIGIN],
            "Access-Control-Request-Method": ["GET"],
            "Access-Control-Request-Headers": ["x-api-key"],
        },
    )
    response = lambda_handler(event, None)
    assert response["statusCode"] == 204
    assert response["body"] == ""
    assert response["headers"]["access-control-allow-origin"] == ORIGIN
    assert response["headers"]["access-control-allow-methods"] == "GET, OPTIONS"
    assert "x-api-key" in response["headers"]["access-control-allow-headers"]
    evil = lambda_handler(proxy_event("OPTIONS", headers={"Origin": ["https://evil.example"]}), None)
    assert evil["statusCode"] == 403
    assert "access-control-allow-origin" not in evil["headers"]


def test_event_with_single_value_fields_only(lambda_env: Path):
    event = proxy_event("GET")
    event["queryStringParameters"] = {"user_id": "4"}
    event["headers"] = {"x-api-key": KEY}
    event["multiValueQueryStringParameters"] = None
    event["multiValueHeaders"] = None
    assert lambda_handler(event, None)["statusCode"] == 200
    del event["requestContext"]
    assert lambda_handler(event, None)["statusCode"] == 200


def test_routes_on_the_resource_not_a_custom_domain_path(lambda_env: Path):
    event = proxy_event("GET", query={"user_id": ["3"]}, headers={"x-api-key": [KEY]})
    event["path"] = "/shop-api/recommendations"  # base path mapping of a custom domain
    assert lambda_handler(event, None)["statusCode"] == 200
    event = proxy_event("GET", path="/anything", query={"user_id": ["3"]}, headers={"x-api-key": [KEY]})
    event["resource"] = "/{proxy+}"
    assert lambda_handler(event, None)["statusCode"] == 404


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"user_id": ["3", "4"]}, 400),
        ({"user_id": ["3"], "k": ["1", "2"]}, 400),
        ({"user_id": ["\u0661"]}, 400),  # ARABIC-INDIC DIGIT ONE
        ({"user_id": ["1 OR 1=1"]}, 400),
        ({"user_id": ["99999999999"]}, 400),
        ({"user_id": [""]}, 400),
        ({}, 400),
        ({"user_id": ["999"]}, 404),
    ],
)
def test_bad_queries(lambda_env: Path, query, status: int):
    response = lambda_handler(proxy_event("GET", query=query, headers={"x-api-key": [KEY]}), None)
    assert response["statusCode"] == status
    assert list(json.loads(response["body"])) == ["error"]


def malformed(**fields: Any) -> dict[str, Any]:
    """A GET event with a valid key whose other fields are replaced (None: the field removed)."""
    event = proxy_event("GET", query={"user_id": ["3"]}, headers={"x-api-key": [KEY]})
    for name, value in fields.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def single_query(value: Any) -> dict[str, Any]:
    return {"multiValueQueryStringParameters": None, "queryStringParameters": value}


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        # multi-value query: None values dropped (as in the single-value field), other shapes refused
        ({"multiValueQueryStringParameters": {"user_id": [None]}}, 400),
        ({"multiValueQueryStringParameters": {"user_id": [None, "3"]}}, 200),
        ({"multiValueQueryStringParameters": {"user_id": None}}, 400),
        ({"multiValueQueryStringParameters": {"user_id": "3"}}, 400),
        ({"multiValueQueryStringParameters": {"user_id": "34"}}, 400),
        ({"multiValueQueryStringParameters": {"user_id": 3}}, 400),
        ({"multiValueQueryStringParameters": {"user_id": [3]}}, 400),
        ({"multiValueQueryStringParameters": {"user_id": [["3"]]}}, 400),
        ({"multiValueQueryStringParameters": {"user_id": [{"a": 1}]}}, 400),
        ({"multiValueQueryStringParameters": {3: ["3"]}}, 400),
        ({"multiValueQueryStringParameters": {None: ["3"]}}, 400),
        ({"multiValueQueryStringParameters": ["user_id", "3"]}, 400),
        ({"multiValueQueryStringParameters": "user_id=3"}, 400),
        # single-value query only
        (single_query({"user_id": None}), 400),
        (single_query({"user_id": 3}), 400),
        (single_query({"user_id": ["3"]}), 400),
        (single_query({3: "3"}), 400),
        (single_query("user_id=3"), 400),
        (single_query(["user_id"]), 400),
        (single_query(None), 400),
        (single_query({"user_id": "999"}), 404),
        # missing or odd fields elsewhere in the event: still answered, never 500
        ({"requestContext": None}, 200),
        ({"requestContext": "v1"}, 200),
        ({"requestContext": {"identity": None}}, 200),
        ({"requestContext": {"identity": "x"}}, 200),
        ({"requestContext": {"identity": {"sourceIp": 7}}}, 200),
        ({"httpMethod": None}, 200),
        ({"httpMethod": 7}, 200),
        ({"resource": None, "path": None}, 404),
        ({"resource": 7, "path": ["/recommendations"]}, 404),
        ({"resource": None}, 200),
    ],
)
def test_malformed_events_are_answered_in_json_never_500(lambda_env: Path, fields, status: int):
    response = lambda_handler(malformed(**fields), None)
    assert response["statusCode"] == status, response
    assert response["headers"]["content-type"] == "application/json"
    payload = json.loads(response["body"])
    if status != 200:
        assert list(payload) == ["error"]
        assert payload["error"] != "internal error"


@pytest.mark.parametrize(
    "fields",
    [
        {"multiValueHeaders": {"x-api-key": [None]}, "headers": None},
        {"multiValueHeaders": {"x-api-key": [7]}, "headers": None},
        {"multiValueHeaders": {"x-api-key": KEY}, "headers": None},
        {"multiValueHeaders": {7: [KEY]}, "headers": None},
        {"multiValueHeaders": [KEY], "headers": None},
        {"multiValueHeaders": None, "headers": {"x-api-key": None}},
        {"multiValueHeaders": None, "headers": {"x-api-key": [KEY]}},
        {"multiValueHeaders": None, "headers": "x-api-key: key"},
        {"multiValueHeaders": None, "headers": None},
    ],
)
def test_malformed_key_headers_count_as_a_missing_key(lambda_env: Path, fields):
    response = lambda_handler(malformed(**fields), None)
    assert response["statusCode"] == 401, response
    assert json.loads(response["body"]) == {"error": "missing API key: send it in the x-api-key header"}


def test_an_event_that_is_not_a_mapping_is_404_json(lambda_env: Path):
    for event in (None, [], "GET /recommendations"):
        response = lambda_handler(event, None)  # type: ignore[arg-type]
        assert response["statusCode"] == 404
        assert json.loads(response["body"]) == {"error": "not found"}


def test_keys(lambda_env: Path):
    missing = get(headers={})
    assert missing["statusCode"] == 401
    assert missing["headers"]["www-authenticate"] == 'ApiKey header="x-api-key"'
    assert get(headers={"x-api-key": ["wrong"]})["statusCode"] == 403
    assert get(headers={"x-api-key": [KEY, KEY]})["statusCode"] == 403  # repeated header: not one key


def test_rate_limit_uses_the_source_ip_not_headers(lambda_env: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INSTAREC_RATE_LIMIT", "2/300")
    lambda_function.reset()
    statuses = [
        get(headers={"x-api-key": [KEY], "X-Forwarded-For": [f"10.0.0.{n}"]}, source_ip="203.0.113.50")[
            "statusCode"
        ]
        for n in range(3)
    ]
    assert statuses == [200, 200, 429]
    limited = get(source_ip="203.0.113.50")
    assert int(limited["headers"]["retry-after"]) >= 1
    assert get(source_ip="203.0.113.51")["statusCode"] == 200


def test_handler_is_built_once_per_container(lambda_env: Path):
    get()
    first = lambda_function.get_api()
    get()
    assert lambda_function.get_api() is first


def test_bad_configuration_is_500_not_a_crash(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("INSTAREC_RATE_LIMIT", "lots")
    lambda_function.reset()
    with caplog.at_level(logging.ERROR):
        response = get()
    assert response["statusCode"] == 500
    assert json.loads(response["body"]) == {"error": "internal error"}
    assert "INSTAREC_RATE_LIMIT" in caplog.text


def test_missing_store_is_503(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INSTAREC_API_KEYS", KEY)
    lambda_function.reset()
    try:
        response = get()
    finally:
        lambda_function.reset()
    assert response["statusCode"] == 503
    assert json.loads(response["body"]) == {"error": "recommendations are temporarily unavailable"}
