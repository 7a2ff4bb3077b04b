"""Helpers for tests of the serving API: a store, a real uvicorn server in a thread, proxy events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from instarec_assets.serving.api import ServingApi
from instarec_assets.serving.asgi import create_app


def build_sqlite_store(
    path: Path,
    users: int = 50,
    model_version: str = "model-1",
    batch: str = "2025-01-06",
    similar: bool = False,
) -> Path:
    """A SQLite serving store at `path` with users 1..users x 10 recommendations (backends.testing);
    with `similar`, 5 similar items for every recommended product (`similar_items_table`)."""
    from instarec_assets.backends.serving_store import SqliteRecommendationStore
    from instarec_assets.backends.testing import recommendations_table, similar_items_table

    table = recommendations_table(range(1, users + 1)).drop_columns(["model_version"])
    similar_items = None
    if similar:
        similar_items = similar_items_table(sorted(set(table.column("product_id").to_pylist())))
    store = SqliteRecommendationStore(path)
    store.load(table, model_version=model_version, batch=batch, similar_items=similar_items)
    store.close()
    return path


@contextmanager
def running_server(api: ServingApi, **config: Any) -> Iterator[str]:
    """`create_app(api=api)` under a real uvicorn server on 127.0.0.1 (free port); yields its base URL."""
    import uvicorn

    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "access_log": False,
        "log_level": "warning",
        "proxy_headers": False,
        "server_header": False,
        "lifespan": "on",
    }
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(create_app(api=api), **options))
    thread = threading.Thread(target=server.run, name="uvicorn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def proxy_event(
    method: str = "GET",
    path: str = "/recommendations",
    query: dict[str, list[str]] | None = None,
    headers: dict[str, list[str]] | None = None,
    source_ip: str = "203.0.113.7",
    stage: str = "v1",
) -> dict[str, Any]:
    """An API Gateway REST API (v1) Lambda proxy event, shaped as API Gateway sends it."""
    headers = headers or {}
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {name: values[-1] for name, values in headers.items()} or None,
        "multiValueHeaders": dict(headers) or None,
        "queryStringParameters": {name: values[-1] for name, values in (query or {}).items()} or None,
        "multiValueQueryStringParameters": dict(query or {}) or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123",
            "resourcePath": path,
            "httpMethod": method,
            "extendedRequestId": "c6af9ac6-ext",
            "requestTime": "25/Nov/2026:07:00:00 +0000",
            "path": f"/{stage}{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": "abc123",
            "requestTimeEpoch": 1795590000000,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": "Mozilla/5.0",
                "user": None,
                "apiKey": "",
                "apiKeyId": "",
            },
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "apiId": "abc123",
        },
        "body": None,
        "isBase64Encoded": False,
    }
