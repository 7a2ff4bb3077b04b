"""API keys: where they come from (environment, a file, or SSM) and the constant-time check.

A request's `x-api-key` is hashed (BLAKE2b, 32 bytes: CPython's built-in implementation, cheaper per
call than OpenSSL's SHA-256 on the request path) and compared with `hmac.compare_digest` against the
digest of every configured key (all of them, no early exit), so neither the position of the first
wrong byte nor a key's length shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from instarec_assets.serving.settings import ServingConfigError, ServingSettings, parse_keys

log = logging.getLogger(__name__)

FILE_RECHECK_S = 5.0


class KeysUnavailableError(RuntimeError):
    """The key source cannot be read and there is no earlier copy to fall back on."""


class KeySource(Protocol):
    def digests(self) -> tuple[bytes, ...]:
        """Digests (`digest()`) of the accepted keys; raises KeysUnavailableError."""
        ...

    def first_key(self) -> str | None:
        """One accepted key in clear (for the local page's config.json), or None."""
        ...


def digest(key: str | bytes) -> bytes:
    return hashlib.blake2b(key.encode("utf-8") if isinstance(key, str) else key, digest_size=32).digest()


def key_matches(provided: bytes, digests: tuple[bytes, ...]) -> bool:
    candidate = hashlib.blake2b(provided, digest_size=32).digest()
    matched = False
    for accepted in digests:
        matched |= hmac.compare_digest(candidate, accepted)
    return matched


class StaticKeys:
    """`INSTAREC_API_KEYS` plus the lines of `INSTAREC_API_KEYS_FILE` (re-read when the file changes)."""

    def __init__(self, keys: tuple[str, ...] = (), path: str | os.PathLike[str] | None = None):
        self._env_keys = tuple(keys)
        self._path = Path(path) if path else None
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._mtime: float | None = None
        self._keys: tuple[str, ...] = ()
        self._digests: tuple[bytes, ...] = ()
        self._reload(time.monotonic())
        if not self._keys:
            raise ServingConfigError(
                "no API keys: INSTAREC_API_KEYS and INSTAREC_API_KEYS_FILE hold no key"
                if self._path or self._env_keys
                else "no API keys configured"
            )

    def _reload(self, now: float) -> None:
        file_keys: tuple[str, ...] = ()
        if self._path is not None:
            try:
                mtime = self._path.stat().st_mtime
                if mtime == self._mtime:
                    self._checked_at = now
                    return
                file_keys = parse_keys(self._path.read_text(encoding="utf-8"))
                self._mtime = mtime
            except OSError as error:
                if not self._digests:
                    raise ServingConfigError(
                        f"INSTAREC_API_KEYS_FILE {self._path} cannot be read: {error.strerror}"
                    ) from None
                log.warning(
                    "API key file %s cannot be read (%s); keeping the previous keys", self._path, error
                )
                self._checked_at = now
                return
        keys = tuple(dict.fromkeys(self._env_keys + file_keys))
        self._keys = keys
        self._digests = tuple(digest(key) for key in keys)
        self._checked_at = now

    def digests(self) -> tuple[bytes, ...]:
        if self._path is not None:
            now = time.monotonic()
            if now - self._checked_at >= FILE_RECHECK_S:
                with self._lock:
                    if now - self._checked_at >= FILE_RECHECK_S:
                        self._reload(now)
        return self._digests

    def first_key(self) -> str | None:
        self.digests()
        return self._keys[0] if self._keys else None


class SsmKeys:
    """The SecureString parameter `name` (keys comma-separated), decrypted, cached for `ttl_s`.

    When a refresh fails the previous keys stay in use (and the failure is logged); only a
    process that has never read the parameter answers 503.
    """

    def __init__(
        self,
        name: str,
        *,
        ttl_s: float = 300.0,
        region: str = "us-east-1",
        endpoint_url: str = "",
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.ttl_s = ttl_s
        self._region = region
        self._endpoint_url = endpoint_url
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._fetched_at: float | None = None
        self._keys: tuple[str, ...] = ()
        self._digests: tuple[bytes, ...] = ()

    def _ssm(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            kwargs: dict[str, Any] = {
                "region_name": self._region,
                "config": Config(
                    retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=3
                ),
            }
            if self._endpoint_url:
                kwargs["endpoint_url"] = self._endpoint_url
            self._client = boto3.client("ssm", **kwargs)
        return self._client

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.ttl_s

    def digests(self) -> tuple[bytes, ...]:
        if self._fresh(self._clock()):
            return self._digests
        with self._lock:
            now = self._clock()
            if self._fresh(now):
                return self._digests
            try:
                response = self._ssm().get_parameter(Name=self.name, WithDecryption=True)
                keys = parse_keys(response["Parameter"]["Value"])
                if not keys:
                    raise ValueError("the parameter holds no key")
            except Exception as error:
                if self._fetched_at is None:
                    log.error("cannot read the API keys from SSM parameter %s: %s", self.name, error)
                    raise KeysUnavailableError(f"cannot read SSM parameter {self.name}") from None
                log.warning(
                    "cannot refresh SSM parameter %s (%s); keeping the previous keys", self.name, error
                )
                self._fetched_at = now
                return self._digests
            self._keys = keys
            self._digests = tuple(digest(key) for key in keys)
            self._fetched_at = now
            return self._digests

    def first_key(self) -> str | None:
        self.digests()
        return self._keys[0] if self._keys else None


def key_source_from_settings(settings: ServingSettings) -> KeySource | None:
    """The configured key source; None only for an explicitly anonymous local server."""
    if settings.aws:
        return SsmKeys(
            settings.api_key_parameter,
            ttl_s=settings.api_keys_ttl_s,
            region=settings.region,
            endpoint_url=settings.aws_endpoint_url,
        )
    if settings.local_keys_configured:
        return StaticKeys(settings.api_keys, settings.api_keys_file or None)
    if settings.allow_anonymous:
        return None
    raise ServingConfigError(
        "no API keys configured: set INSTAREC_API_KEYS (comma-separated) or INSTAREC_API_KEYS_FILE "
        "(one key per line), or pass --allow-anonymous to serve on a loopback address without keys"
    )
