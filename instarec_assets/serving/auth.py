"""Shopper bearer tokens: verifying OpenID Connect JWTs, and the local key pair that signs demo tokens.

A shopper proves who they are with a JWT from an OpenID Connect issuer (Amazon Cognito on AWS, the
local key pair under `INSTAREC_HOME/auth/` for `instarec serve`). The token is checked with PyJWT
against the issuer's JWKS: the signature (RS256 or ES256 only, pinned; `alg: none` and HMAC never),
`exp`, `iss` and `aud`; the shopper's user id is then read from one configured claim
(`custom:instarec_user_id` by default). `sub` is not a fallback: Cognito's `sub` is an opaque UUID,
not an Instacart user id, so a token without the claim identifies nobody and is refused.

Every refusal is an `AuthError` with a one-line reason; the API answers it 401 (403 for a valid
token that names no user), never with a traceback. A JWKS that cannot be fetched is a
`TokensUnavailableError` (503): the caller's token may be fine.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from instarec_assets.serving.settings import ServingSettings

# Pinned: the asymmetric algorithms Cognito (RS256) and the local key pair (ES256) sign with.
ALGORITHMS = ("RS256", "ES256")
LOCAL_ALGORITHM = "ES256"
LEEWAY_S = 30  # clock skew tolerated on exp/iat/nbf
MAX_TOKEN_BYTES = 8192
DEFAULT_TOKEN_TTL_S = 900
MAX_TOKEN_TTL_S = 86_400
FILE_RECHECK_S = 5.0
PRIVATE_KEY_NAME = "private-key.pem"
JWKS_NAME = "jwks.json"


class AuthError(Exception):
    """A bearer token that is refused; `status` (401, or 403 for a token naming no user) and one line."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status
        self.message = message


class TokensUnavailableError(RuntimeError):
    """The JWKS cannot be read, so no token can be checked right now (answered 503)."""


# ---------------------------------------------------------------- local key pair


def auth_dir(home: str | Path) -> Path:
    return Path(home) / "auth"


def ensure_local_keys(home: str | Path) -> Path:
    """The local signing key (`private-key.pem`, mode 0600) and its public `jwks.json` under
    `INSTAREC_HOME/auth/`, created on first use; returns the JWKS path (`INSTAREC_AUTH_JWKS_FILE`)."""
    folder = auth_dir(home)
    private_path = folder / PRIVATE_KEY_NAME
    jwks_path = folder / JWKS_NAME
    if private_path.is_file() and jwks_path.is_file():
        return jwks_path
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": _thumbprint(jwk), "alg": LOCAL_ALGORITHM, "use": "sig"})
    temporary = jwks_path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    temporary.replace(jwks_path)
    return jwks_path


def _thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC public key: a stable `kid`."""
    import base64
    import hashlib

    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def issue_local_token(settings: ServingSettings, user_id: int, ttl_s: int = DEFAULT_TOKEN_TTL_S) -> str:
    """A token for `user_id` signed by the local key pair, valid for `ttl_s` seconds (demo and tests)."""
    if not 1 <= ttl_s <= MAX_TOKEN_TTL_S:
        raise ValueError(f"--ttl must be 1 to {MAX_TOKEN_TTL_S} seconds, not {ttl_s}")
    jwks_path = ensure_local_keys(settings.home)
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    private = serialization.load_pem_private_key(
        (auth_dir(settings.home) / PRIVATE_KEY_NAME).read_bytes(), password=None
    )
    now = int(time.time())
    claims = {
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "sub": f"local-{user_id}",
        settings.auth_user_claim: str(user_id),
        "token_use": "id",
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, private, algorithm=LOCAL_ALGORITHM, headers={"kid": kid})


# ---------------------------------------------------------------- verification


class FileKeys:
    """Signing keys from a JWKS file (the local key pair's), re-read when the file changes."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime: float | None = None
        self._keys: dict[str, jwt.PyJWK] = {}

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= FILE_RECHECK_S or self._mtime is None:
                self._checked = now
                try:
                    mtime = os.stat(self.path).st_mtime
                    if mtime != self._mtime:
                        jwk_set = jwt.PyJWKSet.from_json(Path(self.path).read_text())
                        self._keys = {key.key_id or "": key for key in jwk_set.keys}
                        self._mtime = mtime
                except (OSError, ValueError, jwt.PyJWTError) as error:
                    if self._mtime is None:
                        raise TokensUnavailableError(
                            f"cannot read the JWKS file {self.path}: {error}"
                        ) from None
        key = self._keys.get(kid or "")
        if key is None:
            raise AuthError("invalid bearer token: it is not signed by a known key")
        return key


class UrlKeys:
    """Signing keys from an issuer's JWKS URL, through PyJWT's `PyJWKClient` (cached, refetched on an
    unknown `kid`)."""

    def __init__(self, url: str, ttl_s: float):
        self.client = jwt.PyJWKClient(url, cache_keys=True, lifespan=int(ttl_s), timeout=5)

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        if not kid:
            raise AuthError("invalid bearer token: its header names no key (kid)")
        try:
            return self.client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as error:
            raise TokensUnavailableError(f"cannot fetch the JWKS: {error}") from None
        except jwt.PyJWKClientError:
            raise AuthError("invalid bearer token: it is not signed by a known key") from None


class TokenVerifier:
    """Checks shopper tokens against the configured issuer, audience and JWKS; thread-safe."""

    def __init__(self, settings: ServingSettings):
        self.issuer = settings.auth_issuer
        self.audience = settings.auth_audience
        self.user_claim = settings.auth_user_claim
        if settings.auth_jwks_url:
            self.keys: FileKeys | UrlKeys = UrlKeys(settings.auth_jwks_url, settings.auth_jwks_ttl_s)
        else:
            self.keys = FileKeys(settings.auth_jwks_file)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's verified claims, or AuthError naming why it is refused."""
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("invalid bearer token: it is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("invalid bearer token: it is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            shown = algorithm if isinstance(algorithm, str) and algorithm.isalnum() else "?"
            raise AuthError(f"invalid bearer token: algorithm {shown[:10]} is not accepted")
        kid = header.get("kid")
        key = self.keys.key_for(kid if isinstance(kid, str) else None)
        if key.algorithm_name != algorithm:
            raise AuthError("invalid bearer token: its algorithm does not match its key")
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("invalid bearer token: it has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid bearer token: it is not meant for this API (audience)") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid bearer token: it comes from another issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid bearer token: the signature does not verify") from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthError(f"invalid bearer token: the {error.claim} claim is missing") from None
        except jwt.PyJWTError:
            raise AuthError("invalid bearer token: it cannot be verified") from None

    def user_id(self, claims: Mapping[str, Any]) -> int:
        """The shopper's user id from the configured claim; AuthError(403) when absent or malformed."""
        value = claims.get(self.user_claim)
        text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
        if not (
            text.isascii() and text.isdigit() and not text.startswith("0") and int(text) <= 2_147_483_647
        ):
            raise AuthError(f"the token carries no valid {self.user_claim} claim (a user id)", status=403)
        return int(text)

    def check_gateway_claims(self, claims: Mapping[str, Any]) -> None:
        """Claims API Gateway's Cognito authorizer already verified (signature, expiry): they must still
        come from the configured issuer and audience (a mis-wired authorizer is refused, not trusted)."""
        if claims.get("iss") != self.issuer:
            raise AuthError("invalid bearer token: it comes from another issuer")
        audience = claims.get("aud") or claims.get("client_id")
        if audience != self.audience:
            raise AuthError("invalid bearer token: it is not meant for this API (audience)")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without one, AuthError when malformed."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    token = token.strip()
    if not token or " " in token or "," in token:
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return token
