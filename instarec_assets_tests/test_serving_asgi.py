"""The ASGI adapter called directly: its fast path for the usual query answers exactly as `handle`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from instarec_assets.backends.serving_store import SqliteRecommendationStore
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.asgi import create_app, parse_query_string
from instarec_assets.serving.ratelimit import SlidingWindowLimiter
from instarec_assets.serving.testing import build_sqlite_store
from instarec_assets_tests.serving_helpers import FakeClock

KEY = "key-one-0123456789"
ORIGIN = "https://recs.example.com"
IP = "198.51.100.7"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sqlite_store(tmp_path_factory.mktemp("serving-asgi") / "recommendations.sqlite", users=30)


def make_api(store_path: Path, limit: int = 10_000, clock: FakeClock | None = None) -> ServingApi:
    settings = ServingSettings(api_keys=(KEY,), allowed_origins=frozenset({ORIGIN}), rate_limit=limit)
    return ServingApi(
        settings,
        store=SqliteRecommendationStore(store_path, read_only=True),
        limiter=SlidingWindowLimiter(limit, 300, clock=clock or FakeClock()),
        static=True,
    )


def asgi_call(app: Any, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]):
    """One request through the ASGI app: (status, headers as str pairs without content-length, body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers,
        "client": (IP, 50000),
    }
    asyncio.run(app(scope, receive, send))
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    response_headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]]
    if start["status"] != 204:
        assert ("content-length", str(len(body["body"]))) in response_headers
    return start["status"], [pair for pair in response_headers if pair[0] != "content-length"], body["body"]


def handle_call(api: ServingApi, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]):
    picked: dict[str, str] = {}
    for name, value in headers:
        if name in (b"x-api-key", b"origin"):
            text, key = value.decode("latin-1"), name.decode("ascii")
            picked[key] = f"{picked[key]}, {text}" if key in picked else text
    status, response_headers, body = api.handle(method, path, parse_query_string(query), picked, IP)
    return status, list(response_headers), body


QUERIES = [
    b"user_id=7",
    b"user_id=7&k=1",
    b"user_id=7&k=20",
    b"user_id=30&k=10",
    b"user_id=31",  # unknown user: 404
    b"user_id=2147483647",  # the largest valid id, unknown
    b"user_id=2147483648",  # one above: 400
    b"user_id=9999999999&k=3",
    b"user_id=07",  # leading zero: 400
    b"user_id=0",
    b"user_id=7&k=0",
    b"user_id=7&k=21",
    b"user_id=7&k=05",
    b"user_id=7&k=99",
    b"k=3&user_id=7",  # other order: the general path
    b"user_id=7&k=3&k=4",
    b"user_id=%37",
    b"user_id=7&extra=1",
    b"",
    b"user_id=",
]
HEADERS = [
    [(b"x-api-key", KEY.encode())],
    [(b"host", b"example"), (b"x-api-key", KEY.encode()), (b"origin", ORIGIN.encode())],
    [(b"x-api-key", KEY.encode()), (b"origin", b"https://evil.example.com")],
    [],  # no key: 401
    [(b"x-api-key", b"wrong")],  # 403
    [(b"x-api-key", KEY.encode()), (b"x-api-key", KEY.encode())],  # repeated: joined, so 403
]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("headers", HEADERS, ids=range(len(HEADERS)))
def test_asgi_answers_exactly_as_handle(store_path: Path, query: bytes, headers):
    api = make_api(store_path)
    app = create_app(api=api)
    for method in ("GET", "POST", "OPTIONS"):
        for path in ("/recommendations", "/other"):
            expected = handle_call(api, method, path, query, headers)
            assert asgi_call(app, method, path, query, headers) == expected, (method, path)


def test_asgi_fast_path_counts_every_request_and_answers_429(store_path: Path):
    clock = FakeClock()
    api = make_api(store_path, limit=3, clock=clock)
    app = create_app(api=api)
    key = [(b"x-api-key", KEY.encode())]
    assert asgi_call(app, "GET", "/recommendations", b"user_id=1&k=3", key)[0] == 200
    assert asgi_call(app, "GET", "/recommendations", b"user_id=1", [(b"x-api-key", b"wrong")])[0] == 403
    assert asgi_call(app, "GET", "/recommendations", b"user_id=99", key)[0] == 404
    status, headers, body = asgi_call(app, "GET", "/recommendations", b"user_id=1&k=3", key)
    assert status == 429
    assert dict(headers)["retry-after"] == "300"
    assert body == b'{"error":"too many requests; retry after 300 seconds"}'


def test_asgi_401_carries_www_authenticate_on_both_paths(store_path: Path):
    """The fast path passes the 401's WWW-Authenticate header through, as the general path does."""
    api = make_api(store_path)
    app = create_app(api=api)
    fast: list[bool] = []
    answer = api.get_recommendations

    def counting(*args: Any, **kwargs: Any):
        fast.append(True)
        return answer(*args, **kwargs)

    api.get_recommendations = counting  # type: ignore[method-assign]
    for query, took_fast_path in ((b"user_id=1&k=3", True), (b"k=3&user_id=1", False)):
        fast.clear()
        status, headers, _ = asgi_call(app, "GET", "/recommendations", query, [(b"origin", ORIGIN.encode())])
        assert status == 401
        assert bool(fast) is took_fast_path, query
        assert ("www-authenticate", 'ApiKey header="x-api-key"') in headers
        assert ("access-control-allow-origin", ORIGIN) in headers


def test_asgi_fast_path_unexpected_error_is_500_and_logged(
    store_path: Path, caplog: pytest.LogCaptureFixture
):
    api = make_api(store_path)
    app = create_app(api=api)

    class Broken:
        backend = "sqlite"

        def lookup(self, user_id: int, k: int):
            raise KeyError("secret detail")

        def close(self) -> None:
            pass

    api._lookup = Broken()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="instarec_assets.serving.api"):
        status, _, body = asgi_call(
            app, "GET", "/recommendations", b"user_id=1", [(b"x-api-key", KEY.encode())]
        )
    assert (status, body) == (500, b'{"error":"internal error"}')
    assert "unexpected error answering GET /recommendations" in caplog.text
    assert "secret detail" not in body.decode()


def test_asgi_answers_the_ready_requests_before_sending(store_path: Path):
    """Requests ready together are all answered (rate limit counted, looked up) before the first
    response is sent, so the responses go out back to back; each one is still complete and correct."""
    api = make_api(store_path)
    app = create_app(api=api)
    events: list[str] = []
    handled = api.get_recommendations

    def counting(*args: Any, **kwargs: Any):
        events.append("answered")
        return handled(*args, **kwargs)

    api.get_recommendations = counting  # type: ignore[method-assign]
    sent: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    def sender(user_id: int):
        async def send(message: dict[str, Any]) -> None:
            events.append("sent")
            sent[user_id].append(message)

        return send

    def scope(user_id: int) -> dict[str, Any]:
        return {
            "type": "http",
            "method": "GET",
            "path": "/recommendations",
            "query_string": b"user_id=%d&k=2" % user_id,
            "headers": [(b"x-api-key", KEY.encode())],
            "client": (IP, 50000),
        }

    async def main() -> None:
        await asyncio.gather(*(app(scope(user_id), receive, sender(user_id)) for user_id in sent))

    asyncio.run(main())
    assert events == ["answered"] * 3 + ["sent"] * 6
    for user_id, messages in sent.items():
        start, body = messages
        assert (
            start["status"] == 200
            and body["body"]
            == handle_call(
                api, "GET", "/recommendations", b"user_id=%d&k=2" % user_id, [(b"x-api-key", KEY.encode())]
            )[2]
        )
