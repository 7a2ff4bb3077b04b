"""`lambda_handler`: API Gateway REST proxy events in, proxy responses out, through `ServingApi`.

The handler is built on the first invocation of a container (settings from the environment, keys
from SSM, the DynamoDB store in aws mode, the SQLite store under INSTAREC_HOME otherwise) and
reused by later invocations. Routing uses the event's `resource` (a greedy `{proxy+}` resource falls
back to `path`). The client IP is API Gateway's `requestContext.identity.sourceIp`
(never a header the client controls). Query parameters and headers are taken from the
`multiValue...` fields when present, so repeated parameters are seen (and refused) as such.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from instarec_assets.serving.api import INTERNAL_ERROR_BODY, JSON_HEADERS, ServingApi
from instarec_assets.serving.settings import ServingSettings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_api: ServingApi | None = None


def get_api() -> ServingApi:
    global _api
    if _api is None:
        with _lock:
            if _api is None:
                _api = ServingApi(ServingSettings.from_env(), static=False)
    return _api


def reset() -> None:
    """Forget the cached handler (tests change the environment between cases)."""
    global _api
    with _lock:
        _api = None


def event_query(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    multi = event.get("multiValueQueryStringParameters")
    if multi:
        return [(name, value) for name, values in multi.items() for value in (values or [])]
    single = event.get("queryStringParameters") or {}
    return [(name, value) for name, value in single.items() if value is not None]


def event_headers(event: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    multi = event.get("multiValueHeaders")
    if multi:
        for name, values in multi.items():
            if values:
                headers[name.lower()] = ", ".join(values)
        return headers
    for name, value in (event.get("headers") or {}).items():
        if value is not None:
            headers[name.lower()] = value
    return headers


def event_route(event: Mapping[str, Any]) -> str:
    """The API resource (`/recommendations`), not `path`, which may carry a custom domain's base path."""
    resource = event.get("resource") or ""
    if resource and "{" not in resource:
        return resource
    return event.get("path") or "/"


def lambda_handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    try:
        api = get_api()
        identity = (event.get("requestContext") or {}).get("identity") or {}
        status, headers, body = api.handle(
            event.get("httpMethod") or "GET",
            event_route(event),
            event_query(event),
            event_headers(event),
            identity.get("sourceIp") or "",
        )
    except Exception:
        log.exception("unexpected error before the request could be handled")
        status, headers, body = 500, list(JSON_HEADERS), INTERNAL_ERROR_BODY
    return {
        "statusCode": status,
        "headers": dict(headers),
        "body": body.decode("utf-8"),
        "isBase64Encoded": False,
    }
