"""The OpenAPI description in the package: valid OpenAPI 3, and it documents what the handler answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from instarec_assets.backends.serving_store import MAX_RANK, ServingStoreError, SqliteRecommendationStore
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.api import MAX_K, PACKAGE_DIR, STATUS_CODES
from instarec_assets.serving.asgi import parse_query_string
from instarec_assets.serving.keys import KeysUnavailableError
from instarec_assets.serving.ratelimit import SlidingWindowLimiter
from instarec_assets.serving.testing import build_sqlite_store

SPEC_PATH = PACKAGE_DIR / "openapi.yaml"
KEY = "spec-key"
ORIGIN = "https://recs.example.com"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def resolve(node: Any, spec: dict[str, Any]) -> Any:
    """The node with every local `$ref` replaced by what it points to."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target, spec)
        return {key: resolve(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, spec) for value in node]
    return node


def test_spec_is_valid_openapi_3(spec: dict[str, Any]):
    validate(spec)
    assert spec["openapi"].startswith("3.")
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": spec["components"]["securitySchemes"]["apiKey"]["description"],
    }


Answer = tuple[str, str, int, dict[str, str], bytes]


def exercised(tmp_path: Path) -> list[Answer]:
    """(method, path, status, headers, body) for a request producing each answer the handler can give."""
    path = build_sqlite_store(tmp_path / "recommendations.sqlite", users=5, similar=True)
    store = SqliteRecommendationStore(path, read_only=True)

    def make(store_=store, limit=1000, **overrides) -> ServingApi:
        settings = ServingSettings(api_keys=(KEY,), allowed_origins=frozenset({ORIGIN}), **overrides)
        return ServingApi(settings, store=store_, limiter=SlidingWindowLimiter(limit, 300), static=True)

    class Exploding:
        def top_k(self, user_id, k):
            raise RuntimeError("boom")

    class Unavailable:
        def top_k(self, user_id, k):
            raise ServingStoreError("down")

        def similar(self, product_id, k):
            raise ServingStoreError("down")

    class NoKeys:
        def digests(self):
            raise KeysUnavailableError("down")

        def first_key(self):
            return None

    api = make()
    no_keys = make()
    no_keys.keys = NoKeys()
    limited = make(limit=1)
    limited.handle("GET", "/recommendations", [("user_id", "1")], {"x-api-key": KEY}, "192.0.2.1")
    good = {"x-api-key": KEY}
    cases = [
        (api, "GET", "/recommendations", "user_id=1", good),
        (api, "GET", "/recommendations", "user_id=x", good),
        (api, "GET", "/recommendations", "user_id=1", {}),
        (api, "GET", "/recommendations", "user_id=1", {"x-api-key": "bad"}),
        (api, "GET", "/recommendations", "user_id=77", good),
        (limited, "GET", "/recommendations", "user_id=1", good),
        (make(store_=Exploding()), "GET", "/recommendations", "user_id=1", good),
        (make(store_=Unavailable()), "GET", "/recommendations", "user_id=1", good),
        (no_keys, "GET", "/recommendations", "user_id=1", good),
        (api, "OPTIONS", "/recommendations", "", {"origin": ORIGIN}),
        (api, "OPTIONS", "/recommendations", "", {"origin": "https://evil.example"}),
        (api, "GET", "/", "", {}),
        (api, "GET", "/config.json", "", {}),
        (api, "GET", "/openapi.yaml", "", {}),
        (api, "POST", "/recommendations", "", good),
        (api, "DELETE", "/", "", good),
        (api, "GET", "/nowhere", "", good),
        (api, "GET", "/similar", "product_id=1000000011&k=3", good),
        (api, "GET", "/similar", "product_id=1", good),
        (api, "GET", "/similar", "product_id=x", good),
        (api, "GET", "/similar", "product_id=1", {}),
        (api, "GET", "/similar", "product_id=1", {"x-api-key": "bad"}),
        (limited, "GET", "/similar", "product_id=1", good),
        (make(store_=Unavailable()), "GET", "/similar", "product_id=1", good),
        (api, "OPTIONS", "/similar", "", {"origin": ORIGIN}),
        (api, "DELETE", "/similar", "", good),
    ]
    answers = []
    for handler, method, route, query, headers in cases:
        status, response_headers, body = handler.handle(
            method, route, parse_query_string(query.encode()), headers, "192.0.2.1"
        )
        answers.append((method, route, status, dict(response_headers), body))
    return answers


def test_spec_documents_every_status_the_handler_returns(spec: dict[str, Any], tmp_path: Path):
    answers = exercised(tmp_path)
    assert {status for _, _, status, _, _ in answers} == set(STATUS_CODES)
    components = spec["components"]["responses"]
    for method, route, status, _, _ in answers:
        operation = spec["paths"].get(route, {}).get(method.lower())
        if operation is None:  # undocumented method or path: the shared 404/405 answers
            expected = "NotFound" if route not in spec["paths"] else "MethodNotAllowed"
            assert expected in components, (method, route)
            assert status == {"NotFound": 404, "MethodNotAllowed": 405}[expected]
            continue
        assert str(status) in operation["responses"], f"{method} {route} answers {status}, undocumented"


def test_bodies_match_the_documented_schemas(spec: dict[str, Any], tmp_path: Path):
    for method, route, status, _, body in exercised(tmp_path):
        operation = spec["paths"].get(route, {}).get(method.lower())
        if operation is None or not body or route in ("/", "/openapi.yaml"):
            continue
        response = resolve(operation["responses"][str(status)], spec)
        schema = response["content"]["application/json"]["schema"]
        OAS30Validator(schema).validate(json.loads(body))


def documented_response(spec: dict[str, Any], method: str, route: str, status: int) -> dict[str, Any]:
    operation = spec["paths"].get(route, {}).get(method.lower())
    if operation is None:
        name = "NotFound" if route not in spec["paths"] else "MethodNotAllowed"
        return resolve(spec["components"]["responses"][name], spec)
    return resolve(operation["responses"][str(status)], spec)


def test_answers_carry_the_headers_the_spec_requires(spec: dict[str, Any], tmp_path: Path):
    """Every header the description marks required (WWW-Authenticate with 401, Retry-After with
    429, Allow with 405 and the preflight) is in the answer; and the ones pinned here are marked."""
    answers = exercised(tmp_path)
    required_seen = set()
    for method, route, status, headers, _ in answers:
        documented = documented_response(spec, method, route, status).get("headers", {})
        for name, header in documented.items():
            if header.get("required"):
                assert name.lower() in headers, f"{method} {route} {status} lacks {name}"
                required_seen.add((status, name))
    assert {(401, "WWW-Authenticate"), (429, "Retry-After"), (405, "Allow")} <= required_seen
    unauthorized = next(headers for _, _, status, headers, _ in answers if status == 401)
    assert unauthorized["www-authenticate"] == 'ApiKey header="x-api-key"'


def test_spec_states_the_stores_limits(spec: dict[str, Any]):
    """A user has at most MAX_RANK items (10 predictions, up to 2 explore items, 40 more); k is 1..MAX_K."""
    get = spec["paths"]["/recommendations"]["get"]
    assert f"up to {MAX_RANK} per user" in " ".join(get["description"].split())
    k = next(p for p in resolve(get["parameters"], spec) if p["name"] == "k")
    assert f"1 to {MAX_K}" in k["description"]
    schemas = spec["components"]["schemas"]
    assert schemas["Recommendation"]["properties"]["rank"]["maximum"] == MAX_RANK
    assert schemas["Recommendations"]["properties"]["recommendations"]["maxItems"] == min(MAX_K, MAX_RANK)


def test_served_description_is_the_file(tmp_path: Path):
    api = ServingApi(ServingSettings(allow_anonymous=True), store=object(), static=True)
    status, headers, body = api.handle("GET", "/openapi.yaml", [], {}, "192.0.2.1")
    assert status == 200
    assert headers[0] == ("content-type", "application/yaml; charset=utf-8")
    assert body == SPEC_PATH.read_bytes()


def test_similar_answers_every_documented_status_and_match_the_schema(spec: dict[str, Any], tmp_path: Path):
    answers = [answer for answer in exercised(tmp_path) if answer[1] == "/similar"]
    assert {(method, status) for method, _, status, _, _ in answers} == {
        ("GET", 200),
        ("GET", 400),
        ("GET", 401),
        ("GET", 403),
        ("GET", 404),
        ("GET", 429),
        ("GET", 503),
        ("OPTIONS", 204),
        ("DELETE", 405),
    }
    ok = next(json.loads(body) for method, _, status, _, body in answers if status == 200)
    assert ok["product_id"] == 1000000011 and len(ok["similar"]) == 3
    parameters = {p["name"]: p for p in resolve(spec["paths"]["/similar"]["get"]["parameters"], spec)}
    assert parameters["product_id"]["required"] is True
    assert parameters["k"]["schema"]["default"] == "5"


def test_spec_parameters_match_the_validation(spec: dict[str, Any]):
    parameters = {p["name"]: p for p in resolve(spec["paths"]["/recommendations"]["get"]["parameters"], spec)}
    assert parameters["user_id"]["required"] is True
    assert parameters["user_id"]["schema"]["pattern"] == "^[1-9][0-9]{0,9}$"
    assert parameters["k"]["schema"]["default"] == "3"
    assert spec["paths"]["/recommendations"]["get"]["security"] == [{"apiKey": []}, {"bearer": []}]


def test_spec_documents_the_filter_parameters_on_both_routes(spec: dict[str, Any]):
    from instarec_assets.serving.filters import FILTER_PARAMETERS, MAX_VALUES

    for route in ("/recommendations", "/similar"):
        parameters = {p["name"]: p for p in resolve(spec["paths"][route]["get"]["parameters"], spec)}
        assert set(FILTER_PARAMETERS) <= set(parameters), route
        assert all(parameters[name]["required"] is False for name in FILTER_PARAMETERS)
    assert f"at most {MAX_VALUES}" in spec["components"]["parameters"]["ExcludeDepartments"]["description"]
