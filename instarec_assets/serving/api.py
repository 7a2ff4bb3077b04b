"""The one request handler behind both the Lambda function and the local ASGI server.

`ServingApi.handle(method, path, query, headers, client_ip) -> (status, headers, body)`:

- `query`: the decoded query parameters as `(name, value)` pairs, in order, repeats kept (None:
  the adapter found the raw query string malformed or longer than MAX_QUERY_LENGTH bytes);
- `headers`: lower-case names to values (a repeated header joined with ", ", as HTTP combines them);
- the answer: an int status, `(name, value)` header pairs and the body as bytes (JSON for the API).

`GET /recommendations?user_id=<1..2147483647>&k=<1..20, default 3>` runs, in this order: the per-IP
rate limit (429 with Retry-After; it counts every API request, refused or not, so guessing keys is
limited too), the API key (401 without `x-api-key`, with the `WWW-Authenticate` header RFC 9110
requires of a 401; 403 with a wrong one), the query (400), the store lookup (404 for a user without
recommendations, 503 when the store cannot be read), then 200.
`GET /similar?product_id=<1..2147483647>&k=<1..20, default 5>` ("customers also buy") runs the same
steps and answers `{"product_id": .., "similar": [{"product_id", "product_name", "aisle",
"department", "score"}, ...]}` from the active serving version, never the product itself; 404 for a
product the version has no similar items for (unknown, no longer current, or too rarely co-bought).
Both take the optional filters of `filters.py` (`exclude_departments`, `exclude_aisles`,
`exclude_products`, `include_departments`, comma-separated; a bad value is a one-line 400), merged
with the configured rules (`ServingSettings.rules`); a filtered answer is the first k allowed items
of the candidates the store holds, in rank order.
`OPTIONS /recommendations` (and `/similar`) is the CORS preflight (204, or 403 for an origin that is not allowed).
Other methods get 405, other paths 404. Every error body is `{"error": "<one line>"}`; an
unexpected exception is logged here and answered 500 `{"error": "internal error"}`, never with
details. With `static=True` (the local server) it also serves the page at `/`, its `/config.json`
and the API description at `/openapi.yaml`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import encode_basestring_ascii as encode_string
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from instarec_assets.backends.recommendations import SOURCES
from instarec_assets.serving.filters import (
    FILTER_PARAMETERS,
    FilterError,
    Filters,
    apply_filters,
    parse_filters,
)
from instarec_assets.serving.keys import (
    KeySource,
    KeysUnavailableError,
    key_matches,
    key_source_from_settings,
)
from instarec_assets.serving.lookup import Lookup, Rows, lookup_for
from instarec_assets.serving.ratelimit import SlidingWindowLimiter
from instarec_assets.serving.settings import ServingSettings

if TYPE_CHECKING:
    from instarec_assets.serving.auth import TokenVerifier

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, str]]  # a list, or one of the shared tuples below (never mutated)
Response = tuple[int, Headers, bytes]

API_PATH = "/recommendations"
ME_PATH = "/me/recommendations"  # a shopper's own list, identified by a bearer token (auth.py)
SIMILAR_PATH = "/similar"
DEFAULT_SIMILAR_K = 5
MAX_USER_ID = 2_147_483_647
DEFAULT_K = 3
MAX_K = 20
MAX_QUERY_LENGTH = 1024
FILTER_CANDIDATES = 64  # rows read for a filtered answer: more than any stored list holds
ALLOWED_METHODS = "GET, OPTIONS"
ALLOWED_HEADERS = "authorization, content-type, x-api-key"
PREFLIGHT_MAX_AGE = "600"
PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_FILES = {
    "/": ("static/index.html", "text/html; charset=utf-8"),
    "/index.html": ("static/index.html", "text/html; charset=utf-8"),
    "/openapi.yaml": ("openapi.yaml", "application/yaml; charset=utf-8"),
}
# Every status `handle` can answer; the OpenAPI description documents each one (tested).
STATUS_CODES = (200, 204, 400, 401, 403, 404, 405, 429, 500, 503)

# ASCII digits only ([0-9], not \d), no sign, no leading zero, no whitespace; checked with fullmatch.
_USER_ID = re.compile(r"[1-9][0-9]{0,9}")
_K = re.compile(r"[1-9][0-9]?")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")

JSON_HEADERS: Headers = (
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
)
API_HEADERS: Headers = (*JSON_HEADERS, ("vary", "Origin"))
# RFC 9110 (11.6.1): a 401 names the scheme that would authenticate; here the key's header.
WWW_AUTHENTICATE: Headers = (("www-authenticate", 'ApiKey header="x-api-key"'),)
BEARER_CHALLENGE: Headers = (("www-authenticate", 'Bearer realm="instarec"'),)
INVALID_TOKEN_CHALLENGE: Headers = (("www-authenticate", 'Bearer realm="instarec", error="invalid_token"'),)
INTERNAL_ERROR_BODY = b'{"error":"internal error"}'


class RequestError(Exception):
    """A request the API refuses; `status` and a one-line message for the JSON body."""

    def __init__(self, status: int, message: str, headers: Headers | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


_ITEM = '{"rank":%d,"product_id":%d,"product_name":%s,"aisle":%s,"department":%s,"probability":%r,%s}'
# The last two fields of an item by its source code (lookup.py): `explore` (kept for older clients)
# and `source`, encoded once.
_SOURCE_FIELDS = tuple(
    f'"explore":{"true" if source == "explore" else "false"},"source":"{source}"' for source in SOURCES
)
_SHORT_STRINGS: dict[str, str] = {}  # aisles, departments, model versions: few distinct values
_SHORT_STRINGS_MAX = 4096


def _encode_short(text: str) -> str:
    encoded = _SHORT_STRINGS.get(text)
    if encoded is None:
        encoded = encode_string(text)
        if len(_SHORT_STRINGS) < _SHORT_STRINGS_MAX:
            _SHORT_STRINGS[text] = encoded
    return encoded


def render(user_id: int, model_version: str, rows: Rows) -> bytes:
    """The 200 body, byte for byte what `json.dumps(payload, separators=(",", ":"))` writes (tested),
    in about a third of its time: ints, ASCII-escaped strings, shortest-repr floats, true/false.
    `probability` must be a float and `source` a source code 0/1/2 (as both lookups return them).
    """
    get, short, tier = _SHORT_STRINGS.get, _encode_short, _SOURCE_FIELDS  # an encoded string is never empty
    items = ",".join(
        [
            _ITEM
            % (
                rank,
                product_id,
                encode_string(name),
                get(aisle) or short(aisle),
                get(department) or short(department),
                probability,
                tier[source],
            )
            for rank, product_id, name, aisle, department, probability, source in rows
        ]
    )
    version = get(model_version) or short(model_version)
    body = f'{{"user_id":{user_id:d},"model_version":{version},"recommendations":[{items}]}}'
    return body.encode("ascii")


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode("utf-8")


def json_error(status: int, message: str, headers: Headers | None = None) -> Response:
    return status, [*JSON_HEADERS, *(headers or [])], error_body(message)


class ServingApi:
    """Settings, key source, rate limiter and store of one process; `handle` is thread-safe."""

    def __init__(
        self,
        settings: ServingSettings,
        *,
        store: Any = None,
        store_factory: Callable[[], Any] | None = None,
        keys: KeySource | str | None = "from-settings",
        limiter: SlidingWindowLimiter | None = None,
        static: bool = False,
    ):
        self.settings = settings
        self.keys: KeySource | None = key_source_from_settings(settings) if keys == "from-settings" else keys  # type: ignore[assignment]
        self.limiter = (
            limiter
            if limiter is not None
            else SlidingWindowLimiter(settings.rate_limit, settings.rate_window_s)
        )
        self.static = static
        self._store = store
        self._store_factory = store_factory or self._default_store
        self._store_lock = threading.Lock()
        self._lookup: Lookup | None = None
        self._static_cache: dict[str, Response] = {}
        self._allowed_origins = settings.allowed_origins
        self._hit = self.limiter.hit
        # the configured business rules, None when there are none (the hot path then skips filtering)
        self._rules: Filters | None = settings.rules if settings.rules else None
        # shopper tokens: None when no JWKS is configured (bearer tokens are then refused)
        # (auth.py loads PyJWT and cryptography: only when tokens are configured)
        self.verifier: TokenVerifier | None = None
        if settings.bearer_configured:
            from instarec_assets.serving.auth import TokenVerifier

            self.verifier = TokenVerifier(settings)

    # ------------------------------------------------------------ store
    def _default_store(self) -> Any:
        from instarec_assets.backends.serving_store import store_from_env

        return store_from_env(self.settings.home, read_only=True)

    @property
    def store(self) -> Any:
        """The serving store, opened on first use and then shared (one per process)."""
        store = self._store
        if store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = self._store_factory()
                store = self._store
        return store

    @property
    def lookup(self) -> Lookup:
        """How requests read the store (`lookup.py`): one SQL statement for SQLite, else `top_k`."""
        lookup = self._lookup
        if lookup is None:
            store = self.store
            with self._store_lock:
                if self._lookup is None:
                    self._lookup = lookup_for(store)
                lookup = self._lookup
        return lookup

    @property
    def store_is_local(self) -> bool:
        """True when a lookup is a local SQLite read (fast enough to run on an event loop)."""
        return self.lookup.backend == "sqlite"

    def close(self) -> None:
        if self._lookup is not None:
            self._lookup.close()
        close = getattr(self._store, "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------ entry point
    def handle(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]] | None,
        headers: Mapping[str, str],
        client_ip: str,
        claims: Mapping[str, Any] | None = None,
    ) -> Response:
        """`claims`: a token's claims that API Gateway's Cognito authorizer has already verified (the
        Lambda handler passes `requestContext.authorizer.claims`); None everywhere else."""
        try:
            route = _API_ROUTES.get(path)
            if route is not None:
                if method == "GET":
                    endpoint, options = route
                    return endpoint(
                        self,
                        query,
                        headers.get("x-api-key"),
                        headers.get("origin"),
                        client_ip,
                        authorization=headers.get("authorization"),
                        claims=claims,
                        **options,
                    )
                if method == "OPTIONS":
                    return self._preflight(headers)
                return json_error(
                    405, f"method {_token(method)} is not allowed on {path}", [("allow", ALLOWED_METHODS)]
                )
            if self.static and (path in STATIC_FILES or path == "/config.json"):
                if method != "GET":
                    return json_error(405, f"method {_token(method)} is not allowed here", [("allow", "GET")])
                return self._static(path)
            return json_error(404, "not found")
        except Exception:
            log.exception("unexpected error answering %s %s", _token(method), _token(path, 200))
            return 500, list(API_HEADERS), INTERNAL_ERROR_BODY

    # ------------------------------------------------------------ API
    def get_recommendations(
        self,
        query: Iterable[tuple[str, str]] | None,
        api_key: str | None,
        origin: str | None,
        client_ip: str,
        parsed: tuple[int, int] | None = None,
    ) -> Response:
        """`handle("GET", "/recommendations", ...)` with the two request headers it reads already
        picked out (the ASGI adapter's fast path); the same answers, errors included."""
        try:
            return self.recommendations(query, api_key, origin, client_ip, parsed)
        except Exception:
            log.exception("unexpected error answering GET %s", API_PATH)
            return 500, list(API_HEADERS), INTERNAL_ERROR_BODY

    def _preflight(self, headers: Mapping[str, str]) -> Response:
        origin = headers.get("origin")
        base = [("allow", ALLOWED_METHODS), ("vary", "Origin")]
        if not origin:
            return 204, [*base, ("cache-control", "no-store")], b""
        if origin.lower() not in self._allowed_origins:
            return json_error(403, "origin not allowed", [("vary", "Origin")])
        return (
            204,
            [
                *base,
                ("access-control-allow-origin", origin),
                ("access-control-allow-methods", ALLOWED_METHODS),
                ("access-control-allow-headers", ALLOWED_HEADERS),
                ("access-control-max-age", PREFLIGHT_MAX_AGE),
            ],
            b"",
        )

    def recommendations(
        self,
        query: Iterable[tuple[str, str]] | None,
        api_key: str | None,
        origin: str | None,
        client_ip: str,
        parsed: tuple[int, int] | None = None,
        *,
        authorization: str | None = None,
        claims: Mapping[str, Any] | None = None,
        me: bool = False,
    ) -> Response:
        """`GET /recommendations` (and, with `me`, `GET /me/recommendations`): rate limit, caller,
        query, lookup, in that order.

        The caller is a shopper when a bearer token (`authorization`) or authorizer `claims` come
        with the request: the user id is then the token's, and a `user_id` parameter that differs is
        refused 403. Otherwise it is a service with an API key, which may read any user's list unless
        `INSTAREC_API_KEYS_ANY_USER=0`. `/me/recommendations` takes shoppers only.
        `parsed`: `(user_id, k)` when the caller has already validated the query exactly as
        `parse_query` would (the ASGI adapter's fast path for the usual query); `query` is then
        ignored. The hot path, kept flat (few calls): it runs for every API request.
        """
        cors: Headers = ()
        if origin and origin.lower() in self._allowed_origins:
            cors = (("access-control-allow-origin", origin), ("access-control-expose-headers", "Retry-After"))
        wait = self._hit(client_ip)
        if wait:
            return (
                429,
                (*API_HEADERS, *cors, ("retry-after", str(wait))),
                error_body(f"too many requests; retry after {wait} seconds"),
            )
        try:
            shopper = None
            if me or authorization is not None or claims is not None:
                shopper = self._shopper(authorization, claims)
            elif self.keys is not None:
                self._check_key(api_key)
                if not self.settings.api_keys_any_user:
                    raise RequestError(
                        403,
                        f"API keys may not read a shopper's recommendations here; use {ME_PATH} with a token",
                    )
            if parsed is not None:
                user_id, k = parsed
                filters = self._rules
            else:
                if me and query is not None:
                    query = _with_user_id(query, shopper)
                user_id, k, requested = parse_recommendations_query(query)
                filters = _combined(self._rules, requested)
            if shopper is not None and user_id != shopper:
                raise RequestError(403, "a shopper's token reads only that shopper's own recommendations")
            lookup = self._lookup or self.lookup
            try:
                if filters is None:
                    result = lookup.lookup(user_id, k)
                else:
                    result = lookup.lookup(user_id, FILTER_CANDIDATES)
                    if result is not None:
                        result = (result[0], apply_filters(result[1], filters, k))
            except Exception as error:
                if not _is_store_error(error):
                    raise
                log.error("serving store lookup failed: %s: %s", type(error).__name__, error)
                raise RequestError(503, "recommendations are temporarily unavailable") from None
        except RequestError as error:
            return error.status, (*API_HEADERS, *cors, *error.headers), error_body(error.message)
        if result is None:
            return 404, (*API_HEADERS, *cors), error_body(f"user {user_id} has no recommendations")
        return 200, (*API_HEADERS, *cors) if cors else API_HEADERS, render(user_id, result[0], result[1])

    def similar(
        self,
        query: Iterable[tuple[str, str]] | None,
        api_key: str | None,
        origin: str | None,
        client_ip: str,
        *,
        authorization: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> Response:
        """`GET /similar`: rate limit, caller (an API key or a shopper's token: the answer is about a
        product, not a person), query, lookup, in the order of `recommendations`."""
        cors: Headers = ()
        if origin and origin.lower() in self._allowed_origins:
            cors = (("access-control-allow-origin", origin), ("access-control-expose-headers", "Retry-After"))
        wait = self._hit(client_ip)
        if wait:
            return (
                429,
                (*API_HEADERS, *cors, ("retry-after", str(wait))),
                error_body(f"too many requests; retry after {wait} seconds"),
            )
        try:
            if authorization is not None or claims is not None:
                self._shopper(authorization, claims)
            elif self.keys is not None:
                self._check_key(api_key)
            product_id, k, requested = parse_similar_query(query)
            filters = _combined(self._rules, requested)
            try:
                if filters is None:
                    result = self.lookup.similar(product_id, k)
                else:
                    result = self.lookup.similar(product_id, FILTER_CANDIDATES)
                    if result is not None:
                        result = (result[0], apply_filters(result[1], filters, k))
            except Exception as error:
                if not _is_store_error(error):
                    raise
                log.error("serving store similar-items lookup failed: %s: %s", type(error).__name__, error)
                raise RequestError(503, "similar items are temporarily unavailable") from None
        except RequestError as error:
            return error.status, (*API_HEADERS, *cors, *error.headers), error_body(error.message)
        if result is None:
            return 404, (*API_HEADERS, *cors), error_body(f"product {product_id} has no similar items")
        return 200, (*API_HEADERS, *cors), render_similar(product_id, result[1])

    def _shopper(self, authorization: str | None, claims: Mapping[str, Any] | None) -> int:
        """The user id of the shopper making the request, or RequestError: 401 for a missing or refused
        token, 403 for a valid one naming no user, 503 when the issuer's keys cannot be fetched."""
        if self.verifier is None:
            raise RequestError(
                401, "this server accepts no bearer tokens (no issuer is configured)", BEARER_CHALLENGE
            )
        from instarec_assets.serving.auth import AuthError, TokensUnavailableError, bearer_token

        try:
            if claims is not None:
                self.verifier.check_gateway_claims(claims)
                return self.verifier.user_id(claims)
            token = bearer_token(authorization)
            if token is None:
                raise RequestError(
                    401, "missing bearer token: send it as 'Authorization: Bearer <token>'", BEARER_CHALLENGE
                )
            return self.verifier.user_id(self.verifier.verify(token))
        except AuthError as error:
            headers = INVALID_TOKEN_CHALLENGE if error.status == 401 else None
            raise RequestError(error.status, error.message, headers) from None
        except TokensUnavailableError as error:
            log.error("cannot check a bearer token: %s", error)
            raise RequestError(503, "sign-in is temporarily unavailable") from None

    def _check_key(self, provided: str | None) -> None:
        """RequestError 401 without a key, 403 for a wrong one, 503 when the keys cannot be read."""
        if self.keys is None:
            return
        if not provided:
            raise RequestError(401, "missing API key: send it in the x-api-key header", WWW_AUTHENTICATE)
        try:
            digests = self.keys.digests()
        except KeysUnavailableError:
            raise RequestError(503, "the service is temporarily unavailable") from None
        if not key_matches(provided.encode("utf-8", "surrogatepass"), digests):
            raise RequestError(403, "invalid API key")

    # ------------------------------------------------------------ static
    def _static(self, path: str) -> Response:
        if path == "/config.json":
            return self._page_config()
        cached = self._static_cache.get(path)
        if cached is None:
            name, content_type = STATIC_FILES[path]
            body = (PACKAGE_DIR / name).read_bytes()
            headers: Headers = [
                ("content-type", content_type),
                ("cache-control", "no-cache"),
                ("x-content-type-options", "nosniff"),
            ]
            if content_type.startswith("text/html"):
                headers += [
                    ("content-security-policy", self._content_security_policy()),
                    ("x-frame-options", "DENY"),
                    ("referrer-policy", "no-referrer"),
                ]
            cached = self._static_cache[path] = (200, headers, body)
        return cached[0], list(cached[1]), cached[2]

    def _content_security_policy(self) -> str:
        connect = "'self'"
        for url in (self.settings.page_api_base_url, self.settings.page_sign_in_url):
            if url:  # the API elsewhere; the sign-in's token endpoint (the PKCE code exchange)
                parts = urlsplit(url)
                connect += f" {parts.scheme}://{parts.netloc}"
        return (
            f"default-src 'self'; connect-src {connect}; img-src 'self' data:; "
            "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
        )

    def _page_config(self) -> Response:
        """What the page reads at start: the API's base URL, whether it needs a key, and only if asked a key."""
        config: dict[str, Any] = {
            "apiBaseUrl": self.settings.page_api_base_url,
            "apiKeyRequired": self.keys is not None,
        }
        if self.verifier is not None and not self.settings.page_api_key:
            sign_in = self.settings.page_sign_in_url
            if sign_in:  # authorization code + PKCE at an OIDC hosted sign-in (Cognito's layout)
                config["signIn"] = {
                    "kind": "oidc",
                    "authorizeUrl": f"{sign_in}/oauth2/authorize",
                    "tokenUrl": f"{sign_in}/oauth2/token",
                    "clientId": self.settings.page_sign_in_client_id,
                    "scope": "openid email",
                }
            else:  # the shopper pastes a token from `instarec token USER_ID`
                config["signIn"] = {"kind": "token", "command": "instarec token USER_ID"}
        if self.settings.page_api_key and self.keys is not None:
            try:
                key = self.keys.first_key()
            except KeysUnavailableError:
                key = None
            if key:
                config["apiKey"] = key
        return 200, list(JSON_HEADERS), json.dumps(config, separators=(",", ":")).encode("utf-8")


# The API's routes, for the ASGI server and the Lambda handler alike (both call `handle`): GET runs
# the endpoint with the request's key, origin, bearer token and authorizer claims (and the options
# here), OPTIONS is the CORS preflight, any other method 405.
_API_ROUTES: dict[str, tuple[Callable[..., Response], Mapping[str, Any]]] = {
    API_PATH: (ServingApi.recommendations, {}),
    ME_PATH: (ServingApi.recommendations, {"me": True}),
    SIMILAR_PATH: (ServingApi.similar, {}),
}


def parse_query(query: Iterable[tuple[str, str]] | None) -> tuple[int, int]:
    """`(user_id, k)` from the query pairs (filters validated, not returned); see below."""
    user_id, k, _ = parse_recommendations_query(query)
    return user_id, k


def parse_recommendations_query(query: Iterable[tuple[str, str]] | None) -> tuple[int, int, Filters]:
    """`(user_id, k, filters)` from the query pairs, or RequestError(400) naming what is wrong.

    `None` stands for a query string the adapter could not take apart (too long, too many fields).
    """
    if query is None:
        raise RequestError(400, f"the query string is malformed or longer than {MAX_QUERY_LENGTH} bytes")
    if type(query) is list and 0 < len(query) <= 2 and query[0][0] == "user_id":  # the usual shapes
        user_text = query[0][1]
        if _USER_ID.fullmatch(user_text) and int(user_text) <= MAX_USER_ID:
            if len(query) == 1:
                return int(user_text), DEFAULT_K, NO_FILTERS
            name, k_text = query[1]
            if name == "k" and _K.fullmatch(k_text) and int(k_text) <= MAX_K:
                return int(user_text), int(k_text), NO_FILTERS
        # anything else: the general path below names the problem
    user_text: str | None = None
    k_text: str | None = None
    filter_values: dict[str, str] = {}
    for name, value in query:
        if name in FILTER_PARAMETERS:
            if name in filter_values:
                raise RequestError(400, f"{name} is given more than once")
            filter_values[name] = value
        elif name == "user_id":
            if user_text is not None:
                raise RequestError(400, "user_id is given more than once")
            user_text = value
        elif name == "k":
            if k_text is not None:
                raise RequestError(400, "k is given more than once")
            k_text = value
        else:
            shown = f" {name!r}" if _PARAM_NAME.fullmatch(name) else ""
            raise RequestError(
                400, f"unknown query parameter{shown}; expected user_id and optionally k and {_FILTER_LIST}"
            )
    if user_text is None:
        raise RequestError(400, "user_id is required")
    if not _USER_ID.fullmatch(user_text) or int(user_text) > MAX_USER_ID:
        raise RequestError(400, f"user_id must be a positive integer no greater than {MAX_USER_ID}")
    if k_text is not None and (not _K.fullmatch(k_text) or int(k_text) > MAX_K):
        raise RequestError(400, f"k must be an integer from 1 to {MAX_K}")
    return int(user_text), DEFAULT_K if k_text is None else int(k_text), _filters(filter_values)


NO_FILTERS = Filters()


def _with_user_id(query: Iterable[tuple[str, str]], shopper: int | None) -> list[tuple[str, str]]:
    """`/me/recommendations` query pairs with the shopper's user id added when the query has none."""
    pairs = list(query)
    if shopper is not None and not any(name == "user_id" for name, _ in pairs):
        pairs.insert(0, ("user_id", str(shopper)))
    return pairs


_FILTER_LIST = ", ".join(FILTER_PARAMETERS)


def _filters(values: dict[str, str]) -> Filters:
    if not values:
        return NO_FILTERS
    try:
        return parse_filters(values)
    except FilterError as error:
        raise RequestError(400, str(error)) from None


def _combined(rules: Filters | None, requested: Filters) -> Filters | None:
    """The configured rules and the request's filters together; None when there are none."""
    if not requested:
        return rules
    return requested if rules is None else rules.merged(requested)


def render_similar(product_id: int, rows: Rows) -> bytes:
    """The 200 body of `GET /similar`; rows `(rank, product_id, name, aisle, department, score)`."""
    similar = [
        {"product_id": pid, "product_name": name, "aisle": aisle, "department": department, "score": score}
        for _, pid, name, aisle, department, score in rows
        if pid != product_id
    ]
    return json.dumps({"product_id": product_id, "similar": similar}, separators=(",", ":")).encode("ascii")


def parse_similar_query(query: Iterable[tuple[str, str]] | None) -> tuple[int, int, Filters]:
    """`(product_id, k, filters)` of `GET /similar`, or RequestError(400) naming what is wrong."""
    if query is None:
        raise RequestError(400, f"the query string is malformed or longer than {MAX_QUERY_LENGTH} bytes")
    values: dict[str, str] = {}
    for name, value in query:
        if name not in ("product_id", "k", *FILTER_PARAMETERS):
            shown = f" {name!r}" if _PARAM_NAME.fullmatch(name) else ""
            raise RequestError(
                400,
                f"unknown query parameter{shown}; expected product_id and optionally k and {_FILTER_LIST}",
            )
        if name in values:
            raise RequestError(400, f"{name} is given more than once")
        values[name] = value
    product_text = values.get("product_id")
    if product_text is None:
        raise RequestError(400, "product_id is required")
    if not _USER_ID.fullmatch(product_text) or int(product_text) > MAX_USER_ID:
        raise RequestError(400, f"product_id must be a positive integer no greater than {MAX_USER_ID}")
    k_text = values.get("k")
    if k_text is not None and (not _K.fullmatch(k_text) or int(k_text) > MAX_K):
        raise RequestError(400, f"k must be an integer from 1 to {MAX_K}")
    filters = _filters({name: value for name, value in values.items() if name in FILTER_PARAMETERS})
    return int(product_text), DEFAULT_SIMILAR_K if k_text is None else int(k_text), filters


def _token(text: str, limit: int = 16) -> str:
    """Request text safe to put in a message or a log line: printable ASCII, truncated."""
    cleaned = "".join(char if " " < char < "\x7f" else "?" for char in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _is_store_error(error: Exception) -> bool:
    """Failures of the store itself (missing file, AWS errors), as opposed to bugs."""
    import sqlite3

    from instarec_assets.backends.serving_store import ServingStoreError

    if isinstance(error, ServingStoreError | sqlite3.Error | OSError):
        return True
    return type(error).__module__.split(".")[0] in ("botocore", "boto3")
