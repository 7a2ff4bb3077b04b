"""`lambda_handler`: API Gateway REST proxy events in, proxy responses out, through `ServingApi`.

The handler is built on the first invocation of a container (settings from the environment, keys
from SSM, the DynamoDB store in aws mode, the SQLite store under INSTAREC_HOME otherwise) and
reused by later invocations. Routing uses the event's `resource` (a greedy `{proxy+}` resource falls
back to `path`). A shopper route behind the Cognito authorizer gets the verified token's claims from
`requestContext.authorizer.claims` (`authorizer_claims`). The client IP is API Gateway's `requestContext.identity.sourceIp`
(never a header the client controls). Query parameters and headers are taken from the
`multiValue...` fields when present, so repeated parameters are seen (and refused) as such. An
event whose fields are not shaped as API Gateway sends them is answered like a bad request (400
for a malformed query, 401 when the key cannot be read), never 500.
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


def event_query(event: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """The query pairs, or None (answered 400) when a query field is not shaped as API Gateway
    sends it: names mapped to strings, or in `multiValue...` to lists of strings. A None value is
    dropped in both fields (as for a parameter API Gateway sends without a value)."""
    multi = event.get("multiValueQueryStringParameters")
    if not multi:
        single = event.get("queryStringParameters") or {}
        if not isinstance(single, Mapping):
            return None
        multi = {name: [value] for name, value in single.items()}
    if not isinstance(multi, Mapping):
        return None
    pairs: list[tuple[str, str]] = []
    for name, values in multi.items():
        if values is None:
            continue
        if not isinstance(name, str) or not isinstance(values, list | tuple):
            return None
        for value in values:
            if value is None:
                continue
            if not isinstance(value, str):
                return None
            pairs.append((name, value))
    return pairs


def event_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """Lower-case names to values; an entry that is not a string name with string values is left
    out, so a malformed `x-api-key` counts as a missing one (401), never as an error."""
    multi = event.get("multiValueHeaders")
    if not (multi and isinstance(multi, Mapping)):
        single = event.get("headers") or {}
        multi = {name: [value] for name, value in single.items()} if isinstance(single, Mapping) else {}
    headers: dict[str, str] = {}
    for name, values in multi.items():
        if not isinstance(name, str) or not isinstance(values, list | tuple):
            continue
        texts = [value for value in values if isinstance(value, str)]
        if texts:
            headers[name.lower()] = ", ".join(texts)
    return headers


def _text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) and value else default


def event_route(event: Mapping[str, Any]) -> str:
    """The API resource (`/recommendations`), not `path`, which may carry a custom domain's base path."""
    resource = _text(event.get("resource"))
    if resource and "{" not in resource:
        return resource
    return _text(event.get("path"), "/")


def authorizer_claims(request_context: Any) -> Mapping[str, Any] | None:
    """The claims API Gateway's Cognito authorizer verified (`requestContext.authorizer.claims`), or
    None when the route has no authorizer: the handler then verifies an `Authorization: Bearer` token
    itself, or refuses the shopper route. Only API Gateway writes `requestContext`; a client cannot."""
    if not isinstance(request_context, Mapping):
        return None
    authorizer = request_context.get("authorizer")
    claims = authorizer.get("claims") if isinstance(authorizer, Mapping) else None
    return claims if isinstance(claims, Mapping) and claims else None


def lambda_handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    try:
        api = get_api()
        if not isinstance(event, Mapping):
            event = {}
        request_context = event.get("requestContext")
        identity = request_context.get("identity") if isinstance(request_context, Mapping) else None
        source_ip = identity.get("sourceIp") if isinstance(identity, Mapping) else None
        status, headers, body = api.handle(
            _text(event.get("httpMethod"), "GET"),
            event_route(event),
            event_query(event),
            event_headers(event),
            _text(source_ip),
            claims=authorizer_claims(request_context),
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
