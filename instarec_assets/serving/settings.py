"""Serving settings, read once per process from the environment; every bad value is one clear line.

| variable | meaning |
| --- | --- |
| `INSTAREC_ENV` | `local` (default; keys from the variables below) or `aws` (keys from SSM) |
| `INSTAREC_API_KEYS` | local: accepted API keys, comma-separated |
| `INSTAREC_API_KEYS_FILE` | local: a file with one key per line (`#` comments, blank lines ignored) |
| `INSTAREC_API_KEY_PARAMETER` | aws: name of the SSM SecureString holding the keys, comma-separated |
| `INSTAREC_API_KEYS_TTL_S` | aws: seconds the SSM keys are cached (default 300) |
| `INSTAREC_ALLOW_ANONYMOUS` | local only: `1` serves without keys when none are configured (`serve --allow-anonymous`) |
| `INSTAREC_RATE_LIMIT` | `N/S`: at most N requests per S seconds per client IP (default `100/300`) |
| `INSTAREC_ALLOWED_ORIGINS` (or `INSTAREC_ALLOWED_ORIGIN`) | CORS origins, comma-separated, e.g. `https://recs.example.com` |
| `INSTAREC_TRUSTED_PROXIES` | IPs or CIDRs of reverse proxies whose `X-Forwarded-For` is believed (default: none) |
| `INSTAREC_PAGE_API_KEY` | local only: `1` puts the first API key into the page's `/config.json` (`serve --page-key`) |
| `INSTAREC_PAGE_API_BASE_URL` | the `apiBaseUrl` of the served `/config.json` (default: empty, i.e. same origin) |
| `INSTAREC_MAX_HEADER_BYTES` | `instarec serve`: request line + headers larger than this are answered 431 (default 16384) |
| `INSTAREC_MAX_BODY_BYTES` | `instarec serve`: request bodies larger than this are answered 413 (default 1024; the API takes none) |
| `INSTAREC_HEADER_TIMEOUT_S` | `instarec serve`: seconds a client has to send the whole request head, else 408 (default 10) |
| `INSTAREC_KEEP_ALIVE_S` | `instarec serve`: seconds an idle keep-alive connection is kept open (default 5) |
| `INSTAREC_MAX_CONNECTIONS` | `instarec serve`: concurrent connections per worker; beyond, requests get 503 (default 1000) |
| `INSTAREC_SERVING_EXCLUDE_DEPARTMENTS` | business rule: department names never served (comma-separated, as responses show them) |
| `INSTAREC_SERVING_EXCLUDE_AISLES` | business rule: aisle names never served (comma-separated) |
| `INSTAREC_SERVING_EXCLUDE_PRODUCTS` | business rule: product ids never served (comma-separated) |
| `INSTAREC_AUTH_ISSUER` | shopper tokens: the expected `iss` (default `urn:instarec:local`, the local key pair's; required with a JWKS URL) |
| `INSTAREC_AUTH_AUDIENCE` | shopper tokens: the expected `aud` (default `instarec`; on AWS the Cognito app client id) |
| `INSTAREC_AUTH_USER_CLAIM` | shopper tokens: the claim holding the user id (default `custom:instarec_user_id`; no `sub` fallback) |
| `INSTAREC_AUTH_JWKS_URL` | shopper tokens: the issuer's JWKS URL (e.g. Cognito's `.../.well-known/jwks.json`), fetched and cached |
| `INSTAREC_AUTH_JWKS_FILE` | shopper tokens: a JWKS file (local default `INSTAREC_HOME/auth/jwks.json`, the key pair `instarec token` signs with) |
| `INSTAREC_AUTH_JWKS_TTL_S` | seconds the JWKS fetched from the URL is cached (default 300; an unknown `kid` refetches) |
| `INSTAREC_PAGE_SIGN_IN_URL` | the page: an OIDC hosted sign-in base URL (Cognito domain layout: `/oauth2/authorize`, `/oauth2/token`); the page then signs in with authorization code + PKCE instead of a pasted token |
| `INSTAREC_PAGE_SIGN_IN_CLIENT_ID` | the page: the OIDC client id for `INSTAREC_PAGE_SIGN_IN_URL` (default: `INSTAREC_AUTH_AUDIENCE`) |
| `INSTAREC_API_KEYS_ANY_USER` | `1` (default): an API key (a service caller) may read any user's `/recommendations`; `0`: keys get 403 there |
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from instarec_assets.serving.filters import FilterError, Filters, parse_filters

DEFAULT_RATE_LIMIT = "100/300"
DEFAULT_KEYS_TTL_S = 300.0
DEFAULT_MAX_HEADER_BYTES = 16384
DEFAULT_MAX_BODY_BYTES = 1024
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_AUTH_ISSUER = "urn:instarec:local"
DEFAULT_AUTH_AUDIENCE = "instarec"
DEFAULT_AUTH_USER_CLAIM = "custom:instarec_user_id"
DEFAULT_JWKS_TTL_S = 300.0
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
NO_RULES = Filters()
RULE_VARIABLES = {
    "exclude_departments": "INSTAREC_SERVING_EXCLUDE_DEPARTMENTS",
    "exclude_aisles": "INSTAREC_SERVING_EXCLUDE_AISLES",
    "exclude_products": "INSTAREC_SERVING_EXCLUDE_PRODUCTS",
}


class ServingConfigError(ValueError):
    """A serving setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class ServingSettings:
    aws: bool = False
    api_keys: tuple[str, ...] = ()
    api_keys_file: str = ""
    api_key_parameter: str = ""
    api_keys_ttl_s: float = DEFAULT_KEYS_TTL_S
    allow_anonymous: bool = False
    rate_limit: int = 100
    rate_window_s: float = 300.0
    allowed_origins: frozenset[str] = frozenset()
    trusted_proxies: tuple[str, ...] = ()
    page_api_key: bool = False
    page_api_base_url: str = ""
    home: str = ".instarec"
    aws_endpoint_url: str = ""
    region: str = "us-east-1"
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    rules: Filters = NO_RULES  # business rules applied to every response
    # shopper bearer tokens (auth.py); neither a JWKS file nor a URL: bearer tokens are not accepted
    auth_issuer: str = DEFAULT_AUTH_ISSUER
    auth_audience: str = DEFAULT_AUTH_AUDIENCE
    auth_user_claim: str = DEFAULT_AUTH_USER_CLAIM
    auth_jwks_url: str = ""
    auth_jwks_file: str = ""
    auth_jwks_ttl_s: float = DEFAULT_JWKS_TTL_S
    api_keys_any_user: bool = True
    page_sign_in_url: str = ""  # an OIDC hosted sign-in for the page (else: paste a local token)
    page_sign_in_client_id: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingSettings:
        env = os.environ if environ is None else environ
        kind = env.get("INSTAREC_ENV", "local") or "local"
        if kind not in ("local", "aws"):
            raise ServingConfigError(f"INSTAREC_ENV must be 'local' or 'aws', not {kind!r}")
        aws = kind == "aws"
        limit, window = parse_rate_limit(env.get("INSTAREC_RATE_LIMIT", "") or DEFAULT_RATE_LIMIT)
        origins_text = ",".join(
            value
            for value in (env.get("INSTAREC_ALLOWED_ORIGINS", ""), env.get("INSTAREC_ALLOWED_ORIGIN", ""))
        )
        settings = cls(
            aws=aws,
            api_keys=parse_keys(env.get("INSTAREC_API_KEYS", "")),
            api_keys_file=env.get("INSTAREC_API_KEYS_FILE", ""),
            api_key_parameter=env.get("INSTAREC_API_KEY_PARAMETER", ""),
            api_keys_ttl_s=_positive_float(env, "INSTAREC_API_KEYS_TTL_S", DEFAULT_KEYS_TTL_S),
            allow_anonymous=_flag(env, "INSTAREC_ALLOW_ANONYMOUS"),
            rate_limit=limit,
            rate_window_s=window,
            allowed_origins=parse_origins(origins_text),
            trusted_proxies=parse_trusted_proxies(env.get("INSTAREC_TRUSTED_PROXIES", "")),
            page_api_key=_flag(env, "INSTAREC_PAGE_API_KEY"),
            page_api_base_url=env.get("INSTAREC_PAGE_API_BASE_URL", "").rstrip("/"),
            home=env.get("INSTAREC_HOME", "") or ".instarec",
            aws_endpoint_url=env.get("INSTAREC_AWS_ENDPOINT_URL", ""),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            max_header_bytes=_positive_int(env, "INSTAREC_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES),
            max_body_bytes=_positive_int(env, "INSTAREC_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            header_timeout_s=_positive_float(env, "INSTAREC_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S),
            keep_alive_s=_positive_float(env, "INSTAREC_KEEP_ALIVE_S", DEFAULT_KEEP_ALIVE_S),
            max_connections=_positive_int(env, "INSTAREC_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS),
            rules=parse_rules(env),
            **parse_auth(env, aws=aws, home=env.get("INSTAREC_HOME", "") or ".instarec"),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations that would serve without authentication by accident."""
        if self.aws:
            if not self.api_key_parameter:
                raise ServingConfigError(
                    "INSTAREC_API_KEY_PARAMETER must name the SSM parameter holding the API keys in aws mode"
                )
            if self.allow_anonymous:
                raise ServingConfigError("INSTAREC_ALLOW_ANONYMOUS is for local use only, not in aws mode")
            if self.page_api_key:
                raise ServingConfigError("INSTAREC_PAGE_API_KEY is for local use only, not in aws mode")
            return
        if self.api_keys_file and not Path(self.api_keys_file).is_file():
            raise ServingConfigError(f"INSTAREC_API_KEYS_FILE {self.api_keys_file} is not a readable file")
        if self.page_api_key and self.allow_anonymous and not self.local_keys_configured:
            raise ServingConfigError("INSTAREC_PAGE_API_KEY needs an API key, but none is configured")

    @property
    def local_keys_configured(self) -> bool:
        return bool(self.api_keys or self.api_keys_file)

    @property
    def bearer_configured(self) -> bool:
        """True when shopper bearer tokens can be verified (a JWKS file or URL is configured)."""
        return bool(self.auth_jwks_url or self.auth_jwks_file)


def parse_auth(env: Mapping[str, str], *, aws: bool, home: str) -> dict[str, object]:
    """The shopper-token settings. Locally the JWKS defaults to the key pair under INSTAREC_HOME/auth/;
    in aws mode tokens are accepted only when a JWKS URL (Cognito's) is configured."""
    url = env.get("INSTAREC_AUTH_JWKS_URL", "").strip()
    path = env.get("INSTAREC_AUTH_JWKS_FILE", "").strip()
    issuer = env.get("INSTAREC_AUTH_ISSUER", "").strip()
    if url and path:
        raise ServingConfigError("set INSTAREC_AUTH_JWKS_URL or INSTAREC_AUTH_JWKS_FILE, not both")
    if url and not re.fullmatch(r"https?://[^\s]+", url):
        raise ServingConfigError(f"INSTAREC_AUTH_JWKS_URL must be an http(s) URL, not {url!r}")
    if url and not issuer:
        raise ServingConfigError(
            "INSTAREC_AUTH_ISSUER must name the token issuer (iss) when INSTAREC_AUTH_JWKS_URL is set"
        )
    if not url and not path and not aws:
        path = str(Path(home) / "auth" / "jwks.json")
    claim = env.get("INSTAREC_AUTH_USER_CLAIM", "").strip() or DEFAULT_AUTH_USER_CLAIM
    if not re.fullmatch(r"[A-Za-z0-9_:.-]{1,64}", claim):
        raise ServingConfigError(
            f"INSTAREC_AUTH_USER_CLAIM must be a claim name like custom:instarec_user_id, not {claim!r}"
        )
    return {
        "auth_issuer": issuer or DEFAULT_AUTH_ISSUER,
        "auth_audience": env.get("INSTAREC_AUTH_AUDIENCE", "").strip() or DEFAULT_AUTH_AUDIENCE,
        "auth_user_claim": claim,
        "auth_jwks_url": url,
        "auth_jwks_file": path,
        "auth_jwks_ttl_s": _positive_float(env, "INSTAREC_AUTH_JWKS_TTL_S", DEFAULT_JWKS_TTL_S),
        "api_keys_any_user": _flag(env, "INSTAREC_API_KEYS_ANY_USER", default=True),
        **parse_page_sign_in(env),
    }


def parse_page_sign_in(env: Mapping[str, str]) -> dict[str, str]:
    """The page's OIDC sign-in (`/config.json` `signIn`), when configured."""
    url = env.get("INSTAREC_PAGE_SIGN_IN_URL", "").strip().rstrip("/")
    if url and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?", url):
        raise ServingConfigError(
            f"INSTAREC_PAGE_SIGN_IN_URL must be an http(s) URL like https://example.auth.us-east-1.amazoncognito.com, not {url!r}"
        )
    client = env.get("INSTAREC_PAGE_SIGN_IN_CLIENT_ID", "").strip()
    if client and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", client):
        raise ServingConfigError(f"INSTAREC_PAGE_SIGN_IN_CLIENT_ID must be a client id, not {client!r}")
    audience = env.get("INSTAREC_AUTH_AUDIENCE", "").strip() or DEFAULT_AUTH_AUDIENCE
    return {"page_sign_in_url": url, "page_sign_in_client_id": client or (audience if url else "")}


def parse_rules(env: Mapping[str, str]) -> Filters:
    """The configured business rules (`RULE_VARIABLES`); an unset or blank variable adds none."""
    values = {parameter: env[name] for parameter, name in RULE_VARIABLES.items() if env.get(name, "").strip()}
    try:
        return parse_filters(values, names=RULE_VARIABLES)
    except FilterError as error:
        raise ServingConfigError(str(error)) from None


def parse_keys(text: str) -> tuple[str, ...]:
    """Keys separated by commas or line breaks; blank entries and `#` comment lines are dropped."""
    keys: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        keys.extend(part.strip() for part in line.split(",") if part.strip())
    return tuple(dict.fromkeys(keys))


def parse_rate_limit(text: str) -> tuple[int, float]:
    match = re.fullmatch(r"\s*([0-9]{1,9})\s*/\s*([0-9]{1,7})\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ServingConfigError(
            f"INSTAREC_RATE_LIMIT must be N/S (N requests per S seconds, both >= 1), e.g. 100/300; not {text!r}"
        )
    return int(match.group(1)), float(match.group(2))


def parse_origins(text: str) -> frozenset[str]:
    origins = set()
    for part in text.split(","):
        origin = part.strip().rstrip("/")
        if not origin:
            continue
        if origin == "*":
            raise ServingConfigError("INSTAREC_ALLOWED_ORIGINS must list origins; '*' is not accepted")
        if not _ORIGIN.fullmatch(origin):
            raise ServingConfigError(
                f"INSTAREC_ALLOWED_ORIGINS entry {origin!r} is not an origin like https://recs.example.com"
            )
        origins.add(origin.lower())
    return frozenset(origins)


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    entries = tuple(part.strip() for part in text.split(",") if part.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ServingConfigError(
                f"INSTAREC_TRUSTED_PROXIES entry {entry!r} is not an IP address or CIDR"
            ) from None
    return entries


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ServingConfigError(f"{name} must be 1 or 0, not {value!r}")


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ServingConfigError(f"{name} must be a positive number of seconds, not {text!r}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ServingConfigError(f"{name} must be a positive whole number, not {text!r}")
    return int(text)
