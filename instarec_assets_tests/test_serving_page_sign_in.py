"""The page's shopper sign-in in headless Chromium: `instarec serve` configured from the environment
(the local key pair), a token from `instarec token`, and GET /me/recommendations with the bearer token."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import expect

from instarec_assets.backends.serving_store import SqliteRecommendationStore
from instarec_assets.cli import main as cli_main
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.auth import PRIVATE_KEY_NAME, ensure_local_keys
from instarec_assets.serving.testing import running_server
from instarec_assets_tests.test_serving_page import browser, page, store  # noqa: F401 (fixtures)

KEY = "service-key-0123456789"


@pytest.fixture(scope="module")
def auth_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("auth-home")
    ensure_local_keys(home)
    return home


@pytest.fixture(scope="module")
def shop(store: SqliteRecommendationStore, auth_home: Path) -> Iterator[str]:  # noqa: F811
    """`instarec serve` as the environment configures it: API keys for services, tokens for shoppers."""
    settings = ServingSettings.from_env(
        {"INSTAREC_HOME": str(auth_home), "INSTAREC_API_KEYS": KEY, "INSTAREC_RATE_LIMIT": "1000/300"}
    )
    with running_server(ServingApi(settings, store=store, static=True)) as url:
        yield url


def token_for(user_id: int, auth_home: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The last word `instarec token USER_ID` prints."""
    assert cli_main(["token", str(user_id), "--home", str(auth_home)]) == 0
    return capsys.readouterr().out.split()[-1]


def test_shopper_signs_in_with_a_token_and_sees_own_recommendations(
    page,  # noqa: F811
    shop: str,
    auth_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INSTAREC_HOME", raising=False)
    requests: list[tuple[str, str | None, str | None]] = []
    page.on(
        "request",
        lambda request: requests.append(
            (request.url, request.headers.get("authorization"), request.headers.get("x-api-key"))
        ),
    )
    page.goto(shop + "/")
    expect(page.get_by_label("Sign-in token")).to_be_visible()
    assert not page.get_by_label("User ID").is_visible()  # a shopper does not choose whose list
    assert not page.locator("#api-key-field").is_visible()
    expect(page.locator("#empty")).to_contain_text("instarec token")

    # the whole printed line pasted works too: the token is its last word
    assert cli_main(["token", "42", "--home", str(auth_home)]) == 0
    page.get_by_label("Sign-in token").fill(capsys.readouterr().out.strip())
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("recommendation-card").first.wait_for()
    names = page.get_by_test_id("recommendation-card").locator(".product-name").all_inner_texts()
    assert names == ["Banana", "Organic Strawberries", "Organic Baby Spinach"]
    assert page.locator("#results-title").inner_text() == "Top 3 for you (user 42)"
    api_calls = [r for r in requests if "/me/recommendations" in r[0]]
    assert api_calls and api_calls[0][1].startswith("Bearer ey") and api_calls[0][2] is None
    assert not [r for r in requests if "/recommendations?user_id" in r[0]]

    # "Customers also buy" goes with the same token
    page.get_by_test_id("recommendation-card").first.click()
    page.get_by_test_id("similar-card").first.wait_for()
    similar_calls = [r for r in requests if "/similar?" in r[0]]
    assert similar_calls and similar_calls[0][1].startswith("Bearer ")

    # the token survives a reload (sessionStorage), and signing out forgets it
    page.reload()
    expect(page.locator("#signed-in")).to_be_visible()
    page.get_by_role("button", name="Get my recommendations").click()
    page.get_by_test_id("recommendation-card").first.wait_for()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Sign-in token")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('instarec.token')") is None


def test_expired_or_foreign_tokens_send_the_shopper_back_to_sign_in(
    page,  # noqa: F811
    shop: str,
    auth_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    private = serialization.load_pem_private_key(
        (auth_home / "auth" / PRIVATE_KEY_NAME).read_bytes(), password=None
    )
    kid = jwt.get_unverified_header(token_for(42, auth_home, capsys))["kid"]
    now = int(time.time())
    expired = jwt.encode(
        {
            "iss": "urn:instarec:local",
            "aud": "instarec",
            "custom:instarec_user_id": "42",
            "iat": now - 3600,
            "exp": now - 600,
        },
        private,
        algorithm="ES256",
        headers={"kid": kid},
    )
    page.goto(shop + "/")
    page.get_by_label("Sign-in token").fill(expired)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#error")).to_contain_text("expired")
    expect(page.get_by_label("Sign-in token")).to_be_visible()
    assert page.get_by_test_id("recommendation-card").count() == 0

    page.get_by_label("Sign-in token").fill("not a token at all")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#error")).to_contain_text("not a sign-in token")

    # a real token of a shopper without recommendations
    page.get_by_label("Sign-in token").fill(token_for(99, auth_home, capsys))
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#empty")).to_contain_text("No recommendations for you yet")


class AuthorizationServer:
    """A small OpenID Connect issuer on 127.0.0.1 in Cognito's URL layout: `/oauth2/authorize` signs
    shopper 42 in at once and redirects back with a code; `/oauth2/token` checks the PKCE verifier
    (S256) against the challenge before it issues an RS256 ID token; `/.well-known/jwks.json`."""

    CLIENT_ID = "page-client"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.codes: dict[str, dict[str, str]] = {}
        self.exchanges: list[str] = []  # "ok" or why a code exchange was refused
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/.well-known/jwks.json":
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(outer.key.public_key()))
                    jwk.update({"kid": "rsa-1", "alg": "RS256", "use": "sig"})
                    self.reply(
                        200, json.dumps({"keys": [jwk]}).encode(), {"content-type": "application/json"}
                    )
                    return
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path != "/oauth2/authorize" or query.get("client_id") != outer.CLIENT_ID:
                    self.reply(400, b"bad authorize request", {})
                    return
                code = secrets.token_urlsafe(16)
                outer.codes[code] = query
                target = f"{query['redirect_uri']}?code={code}&state={urllib.parse.quote(query['state'])}"
                self.reply(302, b"", {"location": target})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                asked = outer.codes.pop(form.get("code", ""), None)
                cors = {"access-control-allow-origin": self.headers.get("origin", "")}
                if asked is None:
                    outer.exchanges.append("unknown code")
                    self.reply(400, b'{"error":"invalid_grant"}', cors)
                    return
                challenge = base64.urlsafe_b64encode(
                    hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                ).rstrip(b"=")
                if (
                    asked.get("code_challenge_method") != "S256"
                    or challenge.decode() != asked.get("code_challenge")
                    or form.get("redirect_uri") != asked.get("redirect_uri")
                    or form.get("grant_type") != "authorization_code"
                ):
                    outer.exchanges.append("PKCE or redirect mismatch")
                    self.reply(400, b'{"error":"invalid_grant"}', cors)
                    return
                now = int(time.time())
                claims = {
                    "iss": outer.issuer,
                    "aud": outer.CLIENT_ID,
                    "sub": "5f0c-uuid",
                    "custom:instarec_user_id": "42",
                    "token_use": "id",
                    "iat": now,
                    "exp": now + 300,
                }
                id_token = jwt.encode(claims, outer.key, algorithm="RS256", headers={"kid": "rsa-1"})
                outer.exchanges.append("ok")
                body = json.dumps({"id_token": id_token, "token_type": "Bearer", "expires_in": 300})
                self.reply(200, body.encode(), {**cors, "content-type": "application/json"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> AuthorizationServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_shopper_signs_in_at_an_oidc_issuer_with_pkce(
    page,  # noqa: F811
    store: SqliteRecommendationStore,  # noqa: F811
) -> None:
    with AuthorizationServer() as issuer:
        settings = ServingSettings.from_env(
            {
                "INSTAREC_API_KEYS": KEY,
                "INSTAREC_AUTH_JWKS_URL": f"{issuer.issuer}/.well-known/jwks.json",
                "INSTAREC_AUTH_ISSUER": issuer.issuer,
                "INSTAREC_AUTH_AUDIENCE": issuer.CLIENT_ID,
                "INSTAREC_PAGE_SIGN_IN_URL": issuer.issuer,
            }
        )
        with running_server(ServingApi(settings, store=store, static=True)) as shop:
            page.goto(shop + "/")
            assert not page.get_by_label("Sign-in token").is_visible()
            page.get_by_role("button", name="Sign in").click()
            page.get_by_test_id("recommendation-card").first.wait_for()
            assert issuer.exchanges == ["ok"]
            assert page.url == shop + "/"  # the code and state are gone from the address bar
            assert page.locator("#results-title").inner_text() == "Top 3 for you (user 42)"
            assert page.evaluate("sessionStorage.getItem('instarec.pkce')") is None
            # a forged return (a code and state this page never asked for) signs nobody in
            page.get_by_role("button", name="Sign out").click()
            page.goto(shop + "/?code=stolen&state=guess")
            expect(page.locator("#error")).to_contain_text("did not match")
            assert issuer.exchanges == ["ok"]  # no code exchange was attempted
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()
