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
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RATE_LIMIT = "100/300"
DEFAULT_KEYS_TTL_S = 300.0
DEFAULT_MAX_HEADER_BYTES = 16384
DEFAULT_MAX_BODY_BYTES = 1024
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5.0
DEFAULT_MAX_CONNECTIONS = 1000
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


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


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
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
