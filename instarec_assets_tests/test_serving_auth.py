"""Shopper bearer tokens: `instarec token`, and every refused token through `instarec serve` (real HTTP
on 127.0.0.1) and the Lambda handler, the Cognito authorizer's claims, and a JWKS served over HTTP."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from instarec_assets.backends.serving_store import SQLITE_FILE, SqliteRecommendationStore
from instarec_assets.cli import main as cli_main
from instarec_assets.serving import ServingApi, ServingConfigError, ServingSettings, lambda_function
from instarec_assets.serving.auth import PRIVATE_KEY_NAME, ensure_local_keys
from instarec_assets.serving.lambda_function import lambda_handler
from instarec_assets.serving.testing import build_sqlite_store, proxy_event, running_server
from instarec_assets_tests.serving_helpers import lambda_over_sqlite

KEY = "service-key-0123456789"
USER = 7
OTHER = 8
CLAIM = "custom:instarec_user_id"


def cli_token(capsys: pytest.CaptureFixture[str], user_id: int, *extra: str) -> str:
    """A token from `instarec token USER_ID`: the last word of its output."""
    assert cli_main(["token", str(user_id), *extra]) == 0
    return capsys.readouterr().out.split()[-1]


def local_private_key(home: Path) -> Any:
    return serialization.load_pem_private_key((home / "auth" / PRIVATE_KEY_NAME).read_bytes(), password=None)


def local_kid(home: Path) -> str:
    return json.loads((home / "auth" / "jwks.json").read_text())["keys"][0]["kid"]


def claims_for(user_id: int = USER, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "urn:instarec:local",
        "aud": "instarec",
        CLAIM: str(user_id),
        "iat": now,
        "exp": now + 300,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bad_tokens(home: Path) -> dict[str, str]:
    """Each kind of token the API must refuse with 401, built with the real key where it matters."""
    ensure_local_keys(home)
    key, kid = local_private_key(home), local_kid(home)

    def sign(claims: dict[str, Any], key: Any = key) -> str:
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})

    good = sign(claims_for())
    header, _payload, signature = good.split(".")
    forged_payload = b64(json.dumps(claims_for(OTHER)).encode())
    return {
        "expired": sign(claims_for(iat=int(time.time()) - 3600, exp=int(time.time()) - 600)),
        "wrongly signed": sign(claims_for(), key=ec.generate_private_key(ec.SECP256R1())),
        "wrong audience": sign(claims_for(aud="another-api")),
        "wrong issuer": sign(claims_for(iss="https://evil.example.com")),
        "alg none": f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT', 'kid': kid}).encode())}.{forged_payload}.",
        "tampered": f"{header}.{forged_payload}.{signature}",
        "no expiry": sign(claims_for(exp=None)),
        "not a jwt": "not-a-token",
    }


REFUSALS = [
    ("expired", "expired"),
    ("wrongly signed", "signature"),
    ("wrong audience", "audience"),
    ("wrong issuer", "issuer"),
    ("alg none", "algorithm none"),
    ("tampered", "signature"),
    ("no expiry", "exp claim"),
    ("not a jwt", "well-formed"),
]


# ---------------------------------------------------------------- instarec serve (ASGI over HTTP)


@pytest.fixture
def served(home: Path) -> Iterator[str]:
    """`instarec serve` as configured from the environment: API keys plus the local key pair."""
    build_sqlite_store(home / SQLITE_FILE, users=20)
    ensure_local_keys(home)
    settings = ServingSettings.from_env({"INSTAREC_HOME": str(home), "INSTAREC_API_KEYS": KEY})
    store = SqliteRecommendationStore(home / SQLITE_FILE, read_only=True)
    with running_server(ServingApi(settings, store=store, static=True)) as url:
        yield url


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        assert b"\n" not in body.strip()  # one line
        return error.code, dict(error.headers.items()), json.loads(body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_reads_own_recommendations_and_nobody_elses(served: str, home: Path, capsys) -> None:
    token = cli_token(capsys, USER)
    status, _, body = http_get(f"{served}/me/recommendations?k=2", bearer(token))
    assert status == 200 and body["user_id"] == USER and len(body["recommendations"]) == 2
    status, _, body = http_get(f"{served}/recommendations?user_id={USER}", bearer(token))
    assert status == 200 and body["user_id"] == USER
    for path in (f"/recommendations?user_id={OTHER}", f"/me/recommendations?user_id={OTHER}"):
        status, _, body = http_get(served + path, bearer(token))
        assert status == 403 and "own recommendations" in body["error"]
    # the filters of /recommendations apply to /me/recommendations too
    status, _, body = http_get(f"{served}/me/recommendations?k=20&exclude_departments=nope", bearer(token))
    assert status == 200 and body["user_id"] == USER


def test_services_keep_api_keys_for_any_user(served: str) -> None:
    status, _, body = http_get(f"{served}/recommendations?user_id={OTHER}", {"x-api-key": KEY})
    assert status == 200 and body["user_id"] == OTHER
    status, headers, body = http_get(f"{served}/me/recommendations", {"x-api-key": KEY})
    assert status == 401 and "missing bearer token" in body["error"]
    assert headers["www-authenticate"].startswith("Bearer")


def test_api_keys_scoped_off_any_user_get_403(home: Path) -> None:
    build_sqlite_store(home / SQLITE_FILE, users=5)
    settings = ServingSettings.from_env(
        {"INSTAREC_HOME": str(home), "INSTAREC_API_KEYS": KEY, "INSTAREC_API_KEYS_ANY_USER": "0"}
    )
    api = ServingApi(settings, store=SqliteRecommendationStore(home / SQLITE_FILE, read_only=True))
    status, _, body = api.handle(
        "GET", "/recommendations", [("user_id", "3")], {"x-api-key": KEY}, "10.0.0.1"
    )
    assert status == 403 and "/me/recommendations" in json.loads(body)["error"]


@pytest.mark.parametrize(("kind", "reason"), REFUSALS)
def test_serve_refuses_bad_tokens_with_401(served: str, home: Path, kind: str, reason: str) -> None:
    token = bad_tokens(home)[kind]
    for path in ("/me/recommendations", f"/recommendations?user_id={OTHER}"):
        status, headers, body = http_get(served + path, bearer(token))
        assert status == 401, (kind, path, body)
        assert reason in body["error"] and "invalid_token" in headers["www-authenticate"]
        assert set(body) == {"error"}


def test_token_without_the_user_claim_is_403(served: str, home: Path) -> None:
    ensure_local_keys(home)
    token = jwt.encode(
        claims_for(**{CLAIM: None, "sub": "abc"}),
        local_private_key(home),
        algorithm="ES256",
        headers={"kid": local_kid(home)},
    )
    status, _, body = http_get(f"{served}/me/recommendations", bearer(token))
    assert status == 403 and CLAIM in body["error"]


def test_page_config_offers_token_sign_in(served: str) -> None:
    status, _, config = http_get(f"{served}/config.json")
    assert status == 200 and config["signIn"]["kind"] == "token" and "apiKey" not in config


# ---------------------------------------------------------------- instarec token


def test_token_command_prints_a_short_lived_token(home: Path, capsys) -> None:
    assert cli_main(["token", str(USER), "--ttl", "60"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith(f"instarec token: user {USER}")
    token = line.split()[-1]
    jwks = jwt.PyJWKSet.from_json((home / "auth" / "jwks.json").read_text())
    claims = jwt.decode(token, jwks.keys[0].key, algorithms=["ES256"], audience="instarec")
    assert claims[CLAIM] == str(USER) and 55 <= claims["exp"] - time.time() <= 61
    assert (home / "auth" / PRIVATE_KEY_NAME).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("argv", "message"), [(["0"], "USER_ID"), (["5", "--ttl", "0"], "--ttl")])
def test_token_command_bad_input_is_one_line(home: Path, capsys, argv: list[str], message: str) -> None:
    assert cli_main(["token", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("instarec: error:") and message in err and err.count("\n") == 1


# ---------------------------------------------------------------- Lambda handler


@pytest.fixture
def lambda_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    build_sqlite_store(home / SQLITE_FILE, users=20)
    ensure_local_keys(home)
    with lambda_over_sqlite(monkeypatch, KEY):
        yield home


def lambda_get(path: str, headers: dict[str, str], query: dict[str, str] | None = None, claims=None):
    event = proxy_event(
        "GET",
        path=path,
        query={n: [v] for n, v in (query or {}).items()},
        headers={n: [v] for n, v in headers.items()},
    )
    if claims is not None:
        event["requestContext"]["authorizer"] = {"claims": claims}
    response = lambda_handler(event, None)
    assert "\n" not in response["body"]
    return response["statusCode"], response["headers"], json.loads(response["body"])


def test_lambda_token_reads_own_recommendations_only(lambda_env: Path, capsys) -> None:
    token = cli_token(capsys, USER)
    status, _, body = lambda_get("/me/recommendations", bearer(token), {"k": "2"})
    assert status == 200 and body["user_id"] == USER and len(body["recommendations"]) == 2
    status, _, body = lambda_get("/me/recommendations", bearer(token), {"user_id": str(OTHER)})
    assert status == 403
    status, _, body = lambda_get("/recommendations", {"x-api-key": KEY}, {"user_id": str(OTHER)})
    assert status == 200 and body["user_id"] == OTHER


@pytest.mark.parametrize(("kind", "reason"), REFUSALS)
def test_lambda_refuses_bad_tokens_with_401(lambda_env: Path, kind: str, reason: str) -> None:
    status, headers, body = lambda_get("/me/recommendations", bearer(bad_tokens(lambda_env)[kind]))
    assert status == 401 and reason in body["error"], body
    assert "invalid_token" in headers["www-authenticate"]


def test_lambda_uses_the_cognito_authorizer_claims(lambda_env: Path) -> None:
    claims = {"iss": "urn:instarec:local", "aud": "instarec", CLAIM: str(USER), "token_use": "id"}
    status, _, body = lambda_get("/me/recommendations", {}, claims=claims)
    assert status == 200 and body["user_id"] == USER
    status, _, body = lambda_get("/me/recommendations", {}, {"user_id": str(OTHER)}, claims=claims)
    assert status == 403
    status, _, body = lambda_get("/me/recommendations", {}, claims={**claims, "iss": "https://other"})
    assert status == 401 and "issuer" in body["error"]
    status, _, body = lambda_get("/me/recommendations", {}, claims={**claims, "aud": "other-client"})
    assert status == 401 and "audience" in body["error"]
    # no authorizer claims and no token: the handler still denies
    status, _, body = lambda_get("/me/recommendations", {})
    assert status == 401 and "missing bearer token" in body["error"]


# ---------------------------------------------------------------- an issuer's JWKS URL


class JwksServer:
    """A JWKS document served over HTTP on 127.0.0.1, counting fetches."""

    def __init__(self, document: dict[str, Any]):
        self.document = document
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self.url
        finally:
            self.server.shutdown()
            self.server.server_close()


def test_tokens_of_an_issuer_jwks_url_rs256_cached(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_sqlite_store(home / SQLITE_FILE, users=20)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "issuer-key-1", "alg": "RS256", "use": "sig"})
    issuer = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_test"
    jwks = JwksServer({"keys": [jwk]})
    with jwks.running() as url:
        monkeypatch.setenv("INSTAREC_API_KEYS", KEY)
        monkeypatch.setenv("INSTAREC_AUTH_JWKS_URL", url)
        monkeypatch.setenv("INSTAREC_AUTH_ISSUER", issuer)
        monkeypatch.setenv("INSTAREC_AUTH_AUDIENCE", "client-abc")
        lambda_function.reset()
        try:

            def token(**changes: Any) -> str:
                claims = claims_for(**{"iss": issuer, "aud": "client-abc", **changes})
                return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "issuer-key-1"})

            for _ in range(3):
                status, _, body = lambda_get("/me/recommendations", bearer(token()))
                assert status == 200 and body["user_id"] == USER
            assert jwks.fetches == 1  # cached
            status, _, body = lambda_get("/me/recommendations", bearer(token(aud="instarec")))
            assert status == 401 and "audience" in body["error"]
            # an HS256 token "signed" with the public key (algorithm confusion) is refused
            public_pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "issuer-key-1"}).encode())
            payload = b64(json.dumps(claims_for(iss=issuer, aud="client-abc")).encode())
            import hashlib
            import hmac

            mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            status, _, body = lambda_get("/me/recommendations", bearer(f"{header}.{payload}.{b64(mac)}"))
            assert status == 401 and "algorithm HS256" in body["error"]
            # an unknown kid refetches, then is refused
            other = jwt.encode(
                claims_for(iss=issuer, aud="client-abc"), key, algorithm="RS256", headers={"kid": "x"}
            )
            status, _, body = lambda_get("/me/recommendations", bearer(other))
            assert status == 401 and "known key" in body["error"]
        finally:
            lambda_function.reset()


def test_unreachable_jwks_url_is_503(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_sqlite_store(home / SQLITE_FILE, users=5)
    settings = ServingSettings.from_env(
        {
            "INSTAREC_HOME": str(home),
            "INSTAREC_API_KEYS": KEY,
            "INSTAREC_AUTH_JWKS_URL": "http://127.0.0.1:9/jwks.json",
            "INSTAREC_AUTH_ISSUER": "https://issuer.example.com",
        }
    )
    api = ServingApi(settings, store=SqliteRecommendationStore(home / SQLITE_FILE, read_only=True))
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims_for(), rs, algorithm="RS256", headers={"kid": "k"})
    status, _, body = api.handle(
        "GET", "/me/recommendations", [], {"authorization": f"Bearer {token}"}, "1.2.3.4"
    )
    assert status == 503 and json.loads(body) == {"error": "sign-in is temporarily unavailable"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INSTAREC_AUTH_JWKS_URL": "https://x.example.com/jwks.json"}, "INSTAREC_AUTH_ISSUER"),
        ({"INSTAREC_AUTH_JWKS_URL": "ftp://x", "INSTAREC_AUTH_ISSUER": "i"}, "INSTAREC_AUTH_JWKS_URL"),
        ({"INSTAREC_AUTH_USER_CLAIM": "bad claim!"}, "INSTAREC_AUTH_USER_CLAIM"),
        ({"INSTAREC_API_KEYS_ANY_USER": "maybe"}, "INSTAREC_API_KEYS_ANY_USER"),
        ({"INSTAREC_AUTH_JWKS_TTL_S": "-1"}, "INSTAREC_AUTH_JWKS_TTL_S"),
    ],
)
def test_bad_auth_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ServingConfigError, match=message) as raised:
        ServingSettings.from_env(env)
    assert "\n" not in str(raised.value)


def test_me_answers_are_documented_in_the_openapi_spec(home: Path, capsys) -> None:
    import yaml
    from openapi_schema_validator import OAS30Validator

    from instarec_assets.serving.api import PACKAGE_DIR

    spec = yaml.safe_load((PACKAGE_DIR / "openapi.yaml").read_text())
    operation = spec["paths"]["/me/recommendations"]["get"]
    assert operation["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    build_sqlite_store(home / SQLITE_FILE, users=5)
    ensure_local_keys(home)
    settings = ServingSettings.from_env({"INSTAREC_HOME": str(home), "INSTAREC_API_KEYS": KEY})
    api = ServingApi(settings, store=SqliteRecommendationStore(home / SQLITE_FILE, read_only=True))
    good = cli_token(capsys, 3)
    cases = [
        ([], {"authorization": f"Bearer {good}"}),
        ([("k", "x")], {"authorization": f"Bearer {good}"}),
        ([], {}),
        ([], {"authorization": f"Bearer {bad_tokens(home)['expired']}"}),
        ([("user_id", "4")], {"authorization": f"Bearer {good}"}),
        ([], {"authorization": f"Bearer {cli_token(capsys, 99)}"}),
    ]
    statuses = set()
    for query, headers in cases:
        status, response_headers, body = api.handle("GET", "/me/recommendations", query, headers, "10.1.1.1")
        statuses.add(status)
        documented = operation["responses"][str(status)]
        assert "$ref" not in documented
        OAS30Validator(spec_schema(spec, documented)).validate(json.loads(body))
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert name.lower() in dict(response_headers)
    assert statuses == {200, 400, 401, 403, 404}


def spec_schema(spec: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    from instarec_assets_tests.test_serving_openapi import resolve

    return resolve(resolve(response, spec)["content"]["application/json"]["schema"], spec)


AUTH_VARIABLES = (
    "INSTAREC_AUTH_ISSUER",
    "INSTAREC_AUTH_AUDIENCE",
    "INSTAREC_AUTH_USER_CLAIM",
    "INSTAREC_AUTH_JWKS_URL",
    "INSTAREC_AUTH_JWKS_FILE",
    "INSTAREC_AUTH_JWKS_TTL_S",
    "INSTAREC_API_KEYS_ANY_USER",
    "INSTAREC_PAGE_SIGN_IN_URL",
    "INSTAREC_PAGE_SIGN_IN_CLIENT_ID",
)


def test_readme_and_settings_table_list_the_auth_variables() -> None:
    from instarec_assets.serving import settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in AUTH_VARIABLES:
        assert f"| `{name}` |" in readme, name
        assert f"| `{name}` |" in (settings.__doc__ or ""), name


def test_serve_creates_the_local_key_pair(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from instarec_assets.serving.server import build_parser, prepare

    for name in ("INSTAREC_AUTH_JWKS_FILE", "INSTAREC_AUTH_JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INSTAREC_API_KEYS", KEY)
    build_sqlite_store(home / SQLITE_FILE, users=2)
    settings = prepare(build_parser().parse_args(["--port", "0", "--home", str(home)]))
    assert settings.auth_jwks_file == str(home / "auth" / "jwks.json")
    jwks = json.loads((home / "auth" / "jwks.json").read_text())
    assert [key["alg"] for key in jwks["keys"]] == ["ES256"] and "d" not in jwks["keys"][0]


def test_page_config_and_csp_for_an_oidc_sign_in(home: Path) -> None:
    settings = ServingSettings.from_env(
        {
            "INSTAREC_HOME": str(home),
            "INSTAREC_API_KEYS": KEY,
            "INSTAREC_AUTH_JWKS_URL": "https://idp.example.com/pool/.well-known/jwks.json",
            "INSTAREC_AUTH_ISSUER": "https://idp.example.com/pool",
            "INSTAREC_AUTH_AUDIENCE": "client-1",
            "INSTAREC_PAGE_SIGN_IN_URL": "https://shop.auth.eu-west-1.amazoncognito.com/",
        }
    )
    api = ServingApi(settings, store=object(), static=True)
    _, _, body = api.handle("GET", "/config.json", [], {}, "10.0.0.1")
    sign_in = json.loads(body)["signIn"]
    assert sign_in == {
        "kind": "oidc",
        "authorizeUrl": "https://shop.auth.eu-west-1.amazoncognito.com/oauth2/authorize",
        "tokenUrl": "https://shop.auth.eu-west-1.amazoncognito.com/oauth2/token",
        "clientId": "client-1",
        "scope": "openid email",
    }
    _, headers, _ = api.handle("GET", "/", [], {}, "10.0.0.1")
    csp = dict(headers)["content-security-policy"]
    assert "connect-src 'self' https://shop.auth.eu-west-1.amazoncognito.com;" in csp
    with pytest.raises(ServingConfigError, match="INSTAREC_PAGE_SIGN_IN_URL"):
        ServingSettings.from_env({"INSTAREC_PAGE_SIGN_IN_URL": "javascript:alert(1)"})
