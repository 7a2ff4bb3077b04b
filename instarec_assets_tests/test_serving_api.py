"""The serving handler called directly: routes, validation, keys, CORS, rate limit, errors."""

from __future__ import annotations

import hmac
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from instarec_assets.backends.serving_store import ServingStoreError, SqliteRecommendationStore
from instarec_assets.serving import ServingApi, ServingConfigError, ServingSettings, parse_query
from instarec_assets.serving import keys as keys_module
from instarec_assets.serving.api import MAX_USER_ID, STATUS_CODES, RequestError
from instarec_assets.serving.asgi import parse_query_string
from instarec_assets.serving.keys import (
    KeysUnavailableError,
    StaticKeys,
    digest,
    key_matches,
    key_source_from_settings,
)
from instarec_assets.serving.ratelimit import SlidingWindowLimiter
from instarec_assets.serving.testing import build_sqlite_store
from instarec_assets_tests.serving_helpers import FakeClock

KEY = "key-one-0123456789"
OTHER_KEY = "key-two-abcdefghij"
ORIGIN = "https://recs.example.com"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sqlite_store(tmp_path_factory.mktemp("serving") / "recommendations.sqlite", users=50)


@pytest.fixture
def make_api(store_path: Path):
    def make(store=None, limiter=None, **overrides) -> ServingApi:
        fields = {"api_keys": (KEY, OTHER_KEY), "allowed_origins": frozenset({ORIGIN}), "rate_limit": 10_000}
        fields.update(overrides)
        return ServingApi(
            ServingSettings(**fields),
            store=store or SqliteRecommendationStore(store_path, read_only=True),
            limiter=limiter,
            static=True,
        )

    return make


@pytest.fixture
def api(make_api) -> ServingApi:
    return make_api()


def call(
    api: ServingApi, query="user_id=7", headers=None, method="GET", path="/recommendations", ip="198.51.100.1"
):
    """One request; `query` is a raw query string (decoded as the ASGI adapter does) or a list of pairs."""
    pairs = parse_query_string(query.encode("utf-8")) if isinstance(query, str) else query
    sent = {"x-api-key": KEY} if headers is None else headers
    status, response_headers, body = api.handle(method, path, pairs, sent, ip)
    names = [name for name, _ in response_headers]
    assert len(names) == len(set(names)), f"repeated response header in {names}"
    return status, dict(response_headers), body


def error_of(body: bytes) -> str:
    payload = json.loads(body)
    assert list(payload) == ["error"], payload
    assert isinstance(payload["error"], str)
    assert "\n" not in payload["error"]
    return payload["error"]


# ------------------------------------------------------------------------------------------- 200
def test_recommendations_default_k_is_three(api: ServingApi):
    status, headers, body = call(api, "user_id=7")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["vary"] == "Origin"
    assert headers["x-content-type-options"] == "nosniff"
    payload = json.loads(body)
    assert list(payload) == ["user_id", "model_version", "recommendations"]
    assert payload["user_id"] == 7
    assert payload["model_version"] == "model-1"
    items = payload["recommendations"]
    assert [item["rank"] for item in items] == [1, 2, 3]
    assert list(items[0]) == [
        "rank",
        "product_id",
        "product_name",
        "aisle",
        "department",
        "probability",
        "explore",
        "source",
    ]
    assert items[0]["product_id"] == 1_000_000_071
    assert items[0]["product_name"] == "Product 1000000071 · 1"
    assert items[0]["aisle"] == "aisle 1"
    assert items[0]["department"] == "department 1"
    assert items[0]["probability"] == pytest.approx(0.5, abs=1e-5)
    assert items[0]["explore"] is False
    assert items[0]["source"] == "model"


@pytest.mark.parametrize(("k", "expected"), [("1", 1), ("3", 3), ("10", 10), ("20", 10)])
def test_k_limits_the_list(api: ServingApi, k: str, expected: int):
    status, _, body = call(api, f"user_id=12&k={k}")
    assert status == 200
    assert len(json.loads(body)["recommendations"]) == expected


def test_parameter_order_and_percent_encoding_are_accepted(api: ServingApi):
    status, _, body = call(api, "k=2&user_id=%31%32")
    assert status == 200
    assert json.loads(body)["user_id"] == 12


# ------------------------------------------------------------------------------------------- 400
BAD_USER_IDS = [
    "",
    "0",
    "00",
    "-1",
    "+1",
    "01",
    "1.0",
    "1e3",
    "0x10",
    "abc",
    "1 OR 1=1",
    "1; DROP TABLE current_version",
    "' OR '1'='1",
    "1%27%20OR%20%271%27%3D%271",
    "1)--",
    "2147483648",
    "9999999999",
    "99999999999999999999999999999999",
    "%D9%A1%D9%A2",  # Arabic-Indic digits
    "%EF%BC%91%EF%BC%92",  # fullwidth digits
    "%C2%B2",  # superscript two
    "%F0%9D%9F%99",  # mathematical double-struck one
    "%201",
    "1%20",
    "1%0A",
    "1%00",
    "%FF%FE",  # not UTF-8
    "1,2",
    "null",
    "NaN",
    "[1]",
]


@pytest.mark.parametrize("value", BAD_USER_IDS)
def test_bad_user_id_is_400(api: ServingApi, value: str):
    status, headers, body = call(api, f"user_id={value}")
    assert status == 400, value
    assert headers["content-type"] == "application/json"
    assert "user_id" in error_of(body)


def test_largest_user_id_is_valid(api: ServingApi):
    status, _, body = call(api, f"user_id={MAX_USER_ID}")
    assert status == 404
    assert error_of(body) == f"user {MAX_USER_ID} has no recommendations"


@pytest.mark.parametrize("value", ["", "0", "21", "100", "-1", "03", "3.0", "abc", "%D9%A3", "1%0A", "3 "])
def test_bad_k_is_400(api: ServingApi, value: str):
    status, _, body = call(api, f"user_id=7&k={value}")
    assert status == 400
    assert error_of(body) == "k must be an integer from 1 to 20"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "user_id is required"),
        ("k=3", "user_id is required"),
        ("user_id=7&user_id=7", "user_id is given more than once"),
        ("user_id=7&user_id=8", "user_id is given more than once"),
        ("user_id=7&k=3&k=3", "k is given more than once"),
        (
            "user_id=7&debug=1",
            "unknown query parameter 'debug'; expected user_id and optionally k and exclude_departments, exclude_aisles, exclude_products, include_departments",
        ),
        (
            "user_id=7&USER_ID=8",
            "unknown query parameter 'USER_ID'; expected user_id and optionally k and exclude_departments, exclude_aisles, exclude_products, include_departments",
        ),
        (
            "user_id=7&%3Cscript%3E=1",
            "unknown query parameter; expected user_id and optionally k and exclude_departments, exclude_aisles, exclude_products, include_departments",
        ),
        (
            "user_id=7&=1",
            "unknown query parameter; expected user_id and optionally k and exclude_departments, exclude_aisles, exclude_products, include_departments",
        ),
        ("user_id=7&" + "x" * 2000, "the query string is malformed or longer than 1024 bytes"),
        ("&".join(["k=1"] * 20), "the query string is malformed or longer than 1024 bytes"),
    ],
)
def test_malformed_queries_are_400(api: ServingApi, query: str, message: str):
    status, _, body = call(api, query)
    assert status == 400
    assert error_of(body) == message


def test_parse_query_directly():
    assert parse_query([("user_id", "5")]) == (5, 3)
    assert parse_query([("k", "20"), ("user_id", "2147483647")]) == (2147483647, 20)
    with pytest.raises(RequestError) as raised:
        parse_query([("user_id", "٣")])
    assert raised.value.status == 400


# ------------------------------------------------------------------------------------------- 404 / 405
def test_unknown_user_is_404_with_a_clear_message(api: ServingApi):
    status, headers, body = call(api, "user_id=999")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert error_of(body) == "user 999 has no recommendations"


@pytest.mark.parametrize(
    "path", ["/recommendations/", "/recommendation", "/admin", "/../etc/passwd", "/static/x"]
)
def test_unknown_path_is_404_json(api: ServingApi, path: str):
    status, headers, body = call(api, path=path)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert error_of(body) == "not found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "TRACE"])
def test_other_methods_are_405(api: ServingApi, method: str):
    status, headers, body = call(api, method=method)
    assert status == 405
    assert headers["allow"] == "GET, OPTIONS"
    assert error_of(body) == f"method {method} is not allowed on /recommendations"
    status, headers, _ = call(api, method=method, path="/")
    assert status == 405
    assert headers["allow"] == "GET"


# ------------------------------------------------------------------------------------------- keys
def test_missing_key_is_401_and_wrong_key_403(api: ServingApi):
    status, headers, body = call(api, headers={})
    assert status == 401
    assert error_of(body) == "missing API key: send it in the x-api-key header"
    assert headers["www-authenticate"] == 'ApiKey header="x-api-key"'  # RFC 9110: required with 401
    status, headers, _ = call(api, headers={"x-api-key": "", "origin": ORIGIN})
    assert status == 401
    assert headers["www-authenticate"] == 'ApiKey header="x-api-key"'
    assert headers["access-control-allow-origin"] == ORIGIN
    for wrong in ("nope", KEY + "x", KEY[:-1], KEY.upper(), f"{KEY}, {KEY}", "ключ", "\udcff"):
        status, headers, body = call(api, headers={"x-api-key": wrong})
        assert status == 403, wrong
        assert error_of(body) == "invalid API key"
        assert "www-authenticate" not in headers
    assert call(api, headers={"x-api-key": OTHER_KEY})[0] == 200


def test_key_is_checked_before_the_query(api: ServingApi):
    assert call(api, "user_id=abc", headers={})[0] == 401
    assert call(api, "user_id=abc", headers={"x-api-key": "wrong"})[0] == 403


def test_key_check_compares_the_digest_with_every_configured_key(make_api, monkeypatch: pytest.MonkeyPatch):
    """The constant-time check, pinned without timing: the provided key's BLAKE2b digest goes
    through `hmac.compare_digest` against every accepted digest, in order, with no early exit even
    after a match. `==` on the keys (no compare_digest call), comparing raw keys, or a loop that
    stops at the first match (`any`, `return True`) each fail here."""
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", recording)
    configured = ("first-key-000", "second-key-11", "third-key-222")
    digests = tuple(digest(key) for key in configured)
    cases = [
        ("first-key-000", True),
        ("third-key-222", True),
        ("first-key-00", False),
        ("wrong", False),
        ("x" * 500, False),
    ]
    for provided, expected in cases:
        compared.clear()
        assert key_matches(provided.encode(), digests) is expected, provided
        assert compared == [(digest(provided), accepted) for accepted in digests], provided
    # and through the handler: the first of two configured keys is still compared with both
    compared.clear()
    assert call(make_api(), headers={"x-api-key": KEY})[0] == 200
    assert compared == [(digest(KEY), digest(KEY)), (digest(KEY), digest(OTHER_KEY))]


def test_keys_file_comments_and_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# web page\nfile-key-1\n\n file-key-2 , file-key-3\n")
    source = StaticKeys(("env-key",), keys_file)
    assert source.first_key() == "env-key"
    api = ServingApi(ServingSettings(), keys=source, store=object())
    for key in ("env-key", "file-key-1", "file-key-2", "file-key-3"):
        assert api._check_key(key) is None
    monkeypatch.setattr("instarec_assets.serving.keys.FILE_RECHECK_S", 0.0)
    keys_file.write_text("rotated-key\n")
    import os

    os.utime(keys_file, (1, 1))  # a different mtime, whatever the file system's resolution
    with pytest.raises(RequestError) as raised:
        api._check_key("file-key-1")
    assert raised.value.status == 403
    api._check_key("rotated-key")


def test_no_keys_configured_refuses_unless_anonymous(tmp_path: Path):
    with pytest.raises(ServingConfigError, match="no API keys configured"):
        key_source_from_settings(ServingSettings())
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ServingConfigError, match="hold no key"):
        key_source_from_settings(ServingSettings(api_keys_file=str(empty)))
    assert key_source_from_settings(ServingSettings(allow_anonymous=True)) is None


def test_anonymous_server_needs_no_key(make_api):
    api = make_api(api_keys=(), allow_anonymous=True)
    assert call(api, headers={})[0] == 200


def test_unavailable_key_source_is_503(make_api):
    class Broken:
        def digests(self):
            raise KeysUnavailableError("ssm down")

        def first_key(self):
            raise KeysUnavailableError("ssm down")

    api = make_api()
    api.keys = Broken()
    status, _, body = call(api)
    assert status == 503
    assert error_of(body) == "the service is temporarily unavailable"
    assert json.loads(call(api, path="/config.json")[2]) == {"apiBaseUrl": "", "apiKeyRequired": True}


# ------------------------------------------------------------------------------------------- CORS
def test_cors_echoes_only_configured_origins(api: ServingApi):
    _, headers, _ = call(api, headers={"x-api-key": KEY, "origin": ORIGIN})
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["access-control-expose-headers"] == "Retry-After"
    assert headers["vary"] == "Origin"
    for origin in ("https://evil.example", "null", ORIGIN + ".evil.example", "http://recs.example.com"):
        _, headers, _ = call(api, headers={"x-api-key": KEY, "origin": origin})
        assert "access-control-allow-origin" not in headers
        assert headers["vary"] == "Origin"
    # errors carry CORS headers too, so the page can read them
    _, headers, _ = call(api, headers={"origin": ORIGIN})
    assert headers["access-control-allow-origin"] == ORIGIN


def test_preflight(api: ServingApi):
    status, headers, body = call(
        api, method="OPTIONS", headers={"origin": ORIGIN, "access-control-request-method": "GET"}
    )
    assert status == 204
    assert body == b""
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["access-control-allow-methods"] == "GET, OPTIONS"
    assert headers["access-control-allow-headers"] == "authorization, content-type, x-api-key"
    assert headers["access-control-max-age"] == "600"
    assert headers["vary"] == "Origin"
    status, headers, body = call(api, method="OPTIONS", headers={"origin": "https://evil.example"})
    assert status == 403
    assert error_of(body) == "origin not allowed"
    assert "access-control-allow-origin" not in headers
    status, headers, _ = call(api, method="OPTIONS", headers={})
    assert status == 204
    assert "access-control-allow-origin" not in headers
    assert headers["allow"] == "GET, OPTIONS"


def test_settings_read_both_origin_variables():
    settings = ServingSettings.from_env(
        {
            "INSTAREC_API_KEYS": "a,b",
            "INSTAREC_ALLOWED_ORIGINS": "https://a.example, https://B.example:8443/",
            "INSTAREC_ALLOWED_ORIGIN": "https://lambda.example",
        }
    )
    assert settings.allowed_origins == {
        "https://a.example",
        "https://b.example:8443",
        "https://lambda.example",
    }
    assert settings.api_keys == ("a", "b")
    for bad in ("*", "recs.example.com", "https://x.example/path", "javascript:alert(1)"):
        with pytest.raises(ServingConfigError, match="INSTAREC_ALLOWED_ORIGINS"):
            ServingSettings.from_env({"INSTAREC_ALLOWED_ORIGINS": bad})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"INSTAREC_RATE_LIMIT": "100"}, "INSTAREC_RATE_LIMIT"),
        ({"INSTAREC_RATE_LIMIT": "0/300"}, "INSTAREC_RATE_LIMIT"),
        ({"INSTAREC_RATE_LIMIT": "ten/60"}, "INSTAREC_RATE_LIMIT"),
        ({"INSTAREC_ENV": "prod"}, "INSTAREC_ENV"),
        ({"INSTAREC_ENV": "aws"}, "INSTAREC_API_KEY_PARAMETER"),
        (
            {"INSTAREC_ENV": "aws", "INSTAREC_API_KEY_PARAMETER": "/p", "INSTAREC_ALLOW_ANONYMOUS": "1"},
            "local use",
        ),
        (
            {"INSTAREC_ENV": "aws", "INSTAREC_API_KEY_PARAMETER": "/p", "INSTAREC_PAGE_API_KEY": "1"},
            "local use",
        ),
        ({"INSTAREC_TRUSTED_PROXIES": "10.0.0.0/8, proxy.local"}, "INSTAREC_TRUSTED_PROXIES"),
        ({"INSTAREC_ALLOW_ANONYMOUS": "maybe"}, "INSTAREC_ALLOW_ANONYMOUS"),
        ({"INSTAREC_API_KEYS_FILE": "/does/not/exist"}, "INSTAREC_API_KEYS_FILE"),
        ({"INSTAREC_API_KEYS_TTL_S": "-5"}, "INSTAREC_API_KEYS_TTL_S"),
    ],
)
def test_bad_settings_are_one_clear_line(environ: dict[str, str], message: str):
    with pytest.raises(ServingConfigError, match=message) as raised:
        ServingSettings.from_env(environ)
    assert "\n" not in str(raised.value)


def test_settings_defaults():
    settings = ServingSettings.from_env(
        {"INSTAREC_API_KEYS": "k", "INSTAREC_TRUSTED_PROXIES": "10.0.0.0/8,::1"}
    )
    assert (settings.rate_limit, settings.rate_window_s) == (100, 300.0)
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1")
    assert settings.allowed_origins == frozenset()
    assert not settings.aws


# ------------------------------------------------------------------------------------------- rate limit
def test_rate_limit_429_with_retry_after(make_api):
    clock = FakeClock()
    api = make_api(limiter=SlidingWindowLimiter(3, 10, clock=clock))
    assert [call(api)[0] for _ in range(3)] == [200, 200, 200]
    status, headers, body = call(api, headers={"x-api-key": KEY, "origin": ORIGIN})
    assert status == 429
    # 3 requests at the start of a 10 s window: in the next window they still weigh 3 x (10 - t) / 10,
    # which falls to 2 (room for one more) at t = 3.33 s, i.e. 13.33 s from now
    assert headers["retry-after"] == "14"
    assert headers["access-control-allow-origin"] == ORIGIN
    assert error_of(body) == "too many requests; retry after 14 seconds"
    assert call(api, ip="198.51.100.2")[0] == 200  # another client has its own budget
    clock.now += 13
    assert call(api)[0] == 429
    clock.now += 1
    assert call(api)[0] == 200


def test_rate_limit_counts_refused_requests_too(make_api):
    api = make_api(limiter=SlidingWindowLimiter(2, 300, clock=FakeClock()))
    assert call(api, headers={"x-api-key": "guess-1"})[0] == 403
    assert call(api, "user_id=abc")[0] == 400
    assert call(api, headers={"x-api-key": "guess-2"})[0] == 429
    assert call(api)[0] == 429


def test_preflight_and_static_files_are_not_rate_limited(make_api):
    api = make_api(limiter=SlidingWindowLimiter(1, 300, clock=FakeClock()))
    assert call(api)[0] == 200
    assert call(api)[0] == 429
    assert call(api, method="OPTIONS", headers={"origin": ORIGIN})[0] == 204
    assert call(api, path="/")[0] == 200


def test_retry_after_is_exact_for_the_limiter():
    """After waiting Retry-After seconds the next request passes; one second less, it does not."""
    import random

    rng = random.Random(7)
    for limit, window in ((1, 10), (3, 10), (100, 300), (5, 7)):
        clock = FakeClock(0.0)
        limiter = SlidingWindowLimiter(limit, window, clock=clock)
        for _ in range(400):
            clock.now += rng.choice([0.0, 0.01, 0.3, 1.0, 2.5, window / 3])
            wait = limiter.hit("client")
            if wait:
                assert wait >= 1
                if wait > 1:
                    clock.now += wait - 1
                    assert limiter.hit("client") > 0
                    clock.now += 1
                else:
                    clock.now += wait
                assert limiter.hit("client") == 0


def test_limiter_never_allows_more_than_limit_in_a_burst():
    clock = FakeClock(12345.6)
    limiter = SlidingWindowLimiter(100, 300, clock=clock)
    assert sum(limiter.hit("a") == 0 for _ in range(250)) == 100
    clock.now += 300  # a full window later about half of the old window still counts
    allowed = sum(limiter.hit("a") == 0 for _ in range(250))
    assert 1 <= allowed <= 100


def test_limiter_groups_ipv6_by_64_and_forgets_idle_clients():
    clock = FakeClock(0.0)
    limiter = SlidingWindowLimiter(1, 10, clock=clock)
    assert limiter.hit("2001:db8:1:2::1") == 0
    assert limiter.hit("2001:db8:1:2:ffff::9") > 0  # same /64
    assert limiter.hit("2001:db8:1:3::1") == 0
    assert limiter.hit("::ffff:192.0.2.1") == 0
    assert limiter.hit("192.0.2.1") > 0  # the IPv4-mapped form is the same client
    assert len(limiter) == 3
    clock.now += 25
    assert limiter.hit("203.0.113.9") == 0
    assert len(limiter) == 1


# ------------------------------------------------------------------------------------------- 500 / 503
def test_unexpected_error_is_500_without_details(make_api, caplog: pytest.LogCaptureFixture):
    class Exploding:
        backend = "sqlite"

        def top_k(self, user_id: int, k: int):
            raise RuntimeError("secret detail in /srv/app/secret.py line 3")

    api = make_api(store=Exploding())
    with caplog.at_level(logging.ERROR, logger="instarec_assets.serving.api"):
        status, headers, body = call(api, headers={"x-api-key": KEY, "origin": ORIGIN})
    assert status == 500
    assert body == b'{"error":"internal error"}'
    assert headers["content-type"] == "application/json"
    assert "secret" not in body.decode()
    assert "secret detail" in caplog.text  # logged on the server, with the traceback
    assert "Traceback" in caplog.text


def test_store_failure_is_503(make_api, tmp_path: Path):
    missing = SqliteRecommendationStore(tmp_path / "absent" / "recommendations.sqlite", read_only=True)
    status, _, body = call(make_api(store=missing))
    assert status == 503
    assert error_of(body) == "recommendations are temporarily unavailable"

    class Failing:
        def top_k(self, user_id: int, k: int):
            raise ServingStoreError("INSTAREC_DYNAMODB_TABLE must be set")

    assert call(make_api(store=Failing()))[0] == 503


def test_store_is_opened_once(store_path: Path):
    opened = []

    def factory():
        opened.append(1)
        return SqliteRecommendationStore(store_path, read_only=True)

    api = ServingApi(ServingSettings(api_keys=(KEY,)), store_factory=factory)
    for _ in range(5):
        assert call(api)[0] == 200
    assert opened == [1]


# ------------------------------------------------------------------------------------------- static
def test_page_openapi_and_config(api: ServingApi, make_api):
    status, headers, body = call(api, path="/", headers={})
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert b"Product Recommendations" in body
    assert b"Get personalized product suggestions" in body
    assert b"Get Recommendations" in body
    status, headers, body = call(api, path="/openapi.yaml", headers={})
    assert status == 200
    assert body.startswith(b"openapi: 3.")
    status, headers, body = call(api, path="/config.json", headers={})
    assert json.loads(body) == {"apiBaseUrl": "", "apiKeyRequired": True}
    assert headers["cache-control"] == "no-store"
    with_key = make_api(page_api_key=True, page_api_base_url="https://api.example/v1")
    assert json.loads(call(with_key, path="/config.json")[2]) == {
        "apiBaseUrl": "https://api.example/v1",
        "apiKeyRequired": True,
        "apiKey": KEY,
    }
    anonymous = make_api(api_keys=(), allow_anonymous=True, page_api_key=False)
    assert json.loads(call(anonymous, path="/config.json")[2]) == {"apiBaseUrl": "", "apiKeyRequired": False}
    csp = call(with_key, path="/")[1]["content-security-policy"]
    assert "connect-src 'self' https://api.example;" in csp


def test_lambda_style_api_serves_no_page(store_path: Path):
    api = ServingApi(
        ServingSettings(api_keys=(KEY,)),
        store=SqliteRecommendationStore(store_path, read_only=True),
        static=False,
    )
    for path in ("/", "/config.json", "/openapi.yaml"):
        assert call(api, path=path)[0] == 404


def test_every_status_code_is_listed(api: ServingApi):
    assert set(STATUS_CODES) == {200, 204, 400, 401, 403, 404, 405, 429, 500, 503}


# ------------------------------------------------------------------------------------------- imports
def test_import_serving_is_dagster_free():
    code = (
        "import sys, instarec_assets.serving as s\n"
        "assert callable(s.lambda_handler)\n"
        "heavy = sorted(m for m in ('dagster', 'uvicorn', 'numpy', 'pyarrow', 'pandas', 'duckdb', 'boto3', "
        "'instarec_assets.definitions', 'instarec_assets.pipeline') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing instarec_assets.serving loaded {done.stdout.strip()}"


def test_no_response_body_holds_a_stack_trace(make_api, caplog: pytest.LogCaptureFixture):
    """Every error path, driven here: bad input, refused keys, unknown user and path, the rate
    limit, and failures whose exception text holds a traceback and file paths. None of it reaches
    a body; the traceback goes to the log only."""
    leak = 'Traceback (most recent call last):\n  File "/srv/app/secret.py", line 3, in top_k'

    class Exploding:
        def top_k(self, user_id: int, k: int):
            raise RuntimeError(leak)

    class Failing:
        def top_k(self, user_id: int, k: int):
            raise ServingStoreError(f"/srv/data/recommendations.sqlite cannot be opened: {leak}")

    class BrokenKeys:
        def digests(self):
            raise KeysUnavailableError(leak)

        def first_key(self):
            raise KeysUnavailableError(leak)

    api = make_api()
    no_keys = make_api()
    no_keys.keys = BrokenKeys()
    limited = make_api(limiter=SlidingWindowLimiter(1, 300, clock=FakeClock()))
    requests = [
        (api, {"query": "user_id=1%27%20OR%20%271%27%3D%271"}, 400),
        (api, {"query": "user_id=7&k=abc"}, 400),
        (api, {"query": "user_id=7&" + "x" * 2000}, 400),
        (api, {"query": [("user_id", "7"), ('File "/etc/passwd"', "1")]}, 400),
        (api, {"query": None}, 400),
        (api, {"query": "user_id=999"}, 404),
        (api, {"headers": {}}, 401),
        (api, {"headers": {"x-api-key": leak}}, 403),
        (api, {"path": "/srv/app/secret.py"}, 404),
        (api, {"method": "TRACE"}, 405),
        (api, {"method": "OPTIONS", "headers": {"origin": "https://evil.example"}}, 403),
        (make_api(store=Exploding()), {}, 500),
        (make_api(store=Failing()), {}, 503),
        (no_keys, {}, 503),
        (no_keys, {"path": "/config.json"}, 200),
        (limited, {}, 200),
        (limited, {}, 429),
    ]
    with caplog.at_level(logging.ERROR, logger="instarec_assets.serving.api"):
        for handler, request, expected in requests:
            status, _, body = call(handler, **request)
            assert status == expected, (request, body)
            text = body.decode("utf-8")
            for fragment in ("Traceback", 'File "', "/srv/", ".py", "secret", "Error:"):
                assert fragment not in text, (request, text)
    assert "Traceback" in caplog.text  # the 500's traceback is logged on the server
