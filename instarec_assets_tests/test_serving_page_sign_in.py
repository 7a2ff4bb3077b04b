"""The page's shopper sign-in in headless Chromium: `instarec serve` configured from the environment
(the local key pair), a token from `instarec token`, and GET /me/recommendations with the bearer token."""

from __future__ import annotations

import time
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
