"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright for Python).

Nothing is downloaded: Playwright launches /usr/bin/chromium (`apt-get install -y chromium`; .ci/run
installs it). Without it these tests fail, on purpose, with that instruction.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from playwright.sync_api import expect

from instarec_assets.backends.serving_store import SqliteRecommendationStore
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.testing import running_server

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
KEY = "page-key-0123456789"
SLOW_USER = 7
XSS_NAME = '<img src=x onerror="window.pwned=1">Cookies'
PRODUCTS = {
    42: [
        (24852, "Banana", "fresh fruits", "produce", 0.8123),
        (21137, "Organic Strawberries", "fresh fruits", "produce", 0.6549),
        (21903, "Organic Baby Spinach", "packaged vegetables fruits", "produce", 0.4310),
        (47209, "Organic Hass Avocado", "fresh fruits", "produce", 0.2),
    ],
    SLOW_USER: [
        (196, "Soda", "soft drinks", "beverages", 0.9),
        (12427, "Original Beef Jerky", "popcorn jerky", "snacks", 0.5),
        (10258, "Pistachios", "nuts seeds dried fruit", "snacks", 0.05),
    ],
    4: [
        (1, XSS_NAME, "cookies cakes", "snacks", 0.999),
        (2, "Chocolate Sandwich Cookies", "cookies cakes", "snacks", 0.0004),
        (3, "All-Seasons Salt", "spices seasonings", "pantry", 0.5),
    ],
}

# product_id -> its similar items (similar_product_id, name, aisle, department, score), by rank
SIMILAR = {
    24852: [
        (21137, "Organic Strawberries", "fresh fruits", "produce", 0.41),
        (47209, "Organic Hass Avocado", "fresh fruits", "produce", 0.3333),
        (1, XSS_NAME, "cookies cakes", "snacks", 0.05),
    ],
    21137: [(24852, "Banana", "fresh fruits", "produce", 0.41)],
}


class SlowStore:
    """The SQLite store, one user answered after a delay (to see the loading state)."""

    def __init__(self, inner: SqliteRecommendationStore):
        self.inner = inner

    def top_k(self, user_id: int, k: int):
        if user_id == SLOW_USER:
            time.sleep(1.5)
        return self.inner.top_k(user_id, k)

    def similar(self, product_id: int, k: int):
        return self.inner.similar(product_id, k)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteRecommendationStore:
    rows = [
        (user, rank, *product)
        for user, products in PRODUCTS.items()
        for rank, product in enumerate(products, start=1)
    ]
    names = ("user_id", "rank", "product_id", "product_name", "aisle", "department", "probability")
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
    similar_rows = [
        (product, rank, *item)
        for product, items in SIMILAR.items()
        for rank, item in enumerate(items, start=1)
    ]
    similar_names = (
        "product_id",
        "rank",
        "similar_product_id",
        "product_name",
        "aisle",
        "department",
        "score",
    )
    similar = pa.table({name: [row[i] for row in similar_rows] for i, name in enumerate(similar_names)})
    path = tmp_path_factory.mktemp("page") / "recommendations.sqlite"
    SqliteRecommendationStore(path).load(
        table, model_version="xgb-test", batch="2025-01-06", similar_items=similar
    )
    return SqliteRecommendationStore(path, read_only=True)


@pytest.fixture(scope="module")
def site(store: SqliteRecommendationStore) -> Iterator[str]:
    """`instarec serve --page-key` in a thread: the page gets its key from config.json."""
    settings = ServingSettings(api_keys=(KEY,), page_api_key=True, rate_limit=1000)
    with running_server(ServingApi(settings, store=SlowStore(store), static=True)) as url:
        yield url


@pytest.fixture(scope="module")
def keyless_site(store: SqliteRecommendationStore) -> Iterator[str]:
    """A server whose config.json carries no key: the page asks for one."""
    settings = ServingSettings(api_keys=(KEY,), rate_limit=1000)
    with running_server(ServingApi(settings, store=store, static=True)) as url:
        yield url


@pytest.fixture(scope="module")
def anonymous_site(store: SqliteRecommendationStore) -> Iterator[str]:
    """`instarec serve --allow-anonymous`: no key anywhere."""
    settings = ServingSettings(allow_anonymous=True, rate_limit=1000)
    with running_server(ServingApi(settings, store=store, static=True)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium` "
            "(.ci/run does); the page tests need a real browser and download nothing"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def search(page, user_id: str) -> None:
    page.get_by_label("User ID").fill(user_id)
    page.get_by_role("button", name="Get Recommendations").click()


def cards_of(page) -> list[dict[str, str]]:
    cards = page.get_by_test_id("recommendation-card")
    return [
        {
            "name": card.locator(".product-name").inner_text(),
            "probability": card.locator(".probability-value").inner_text(),
            "id": card.locator(".product-id").inner_text(),
        }
        for card in cards.all()
    ]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_three_cards_for_a_user(page, site: str, tmp_path: Path):
    page.goto(site + "/")
    assert page.title() == "Product Recommendations"
    assert page.locator("h1").inner_text() == "Product Recommendations"
    assert page.get_by_text("Get personalized product suggestions").is_visible()
    assert page.locator("#empty").is_visible()  # the empty state before any search
    search(page, "42")
    page.get_by_test_id("recommendation-card").first.wait_for()
    assert cards_of(page) == [
        {"name": "Banana", "probability": "81.2%", "id": "ID: 24852"},
        {"name": "Organic Strawberries", "probability": "65.5%", "id": "ID: 21137"},
        {"name": "Organic Baby Spinach", "probability": "43.1%", "id": "ID: 21903"},
    ]
    for card in cards_of(page):
        assert re.fullmatch(r"\d{1,3}\.\d%", card["probability"])
    assert page.locator("#results-title").inner_text() == "Top 3 for user 42"
    assert not page.locator("#api-key-field").is_visible()  # the key came from config.json
    assert not page.locator("#error").is_visible()
    page.screenshot(path=str(tmp_path / "desktop.png"), full_page=True)
    assert png_size(tmp_path / "desktop.png")[0] == 1280


def test_unknown_user_shows_the_error_state(page, site: str, tmp_path: Path):
    page.set_viewport_size({"width": 390, "height": 700})
    page.goto(site + "/")
    search(page, "42")
    page.get_by_test_id("recommendation-card").first.wait_for()
    search(page, "999999")
    error = page.get_by_role("alert")
    error.wait_for()
    assert error.inner_text() == "No recommendations found for user 999999."
    assert not page.locator("#results").is_visible()
    assert page.get_by_test_id("recommendation-card").count() == 3  # the old cards are hidden, not shown
    page.screenshot(path=str(tmp_path / "unknown-user.png"))


def test_invalid_user_id_is_caught_before_any_request(page, site: str):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(site + "/")
    page.wait_for_load_state("networkidle")
    before = len(requests)
    for value in ("abc", "0", "1 OR 1=1", "99999999999", ""):
        search(page, value)
        assert page.get_by_role("alert").inner_text().startswith("Please enter a valid user ID"), value
    assert len(requests) == before


def test_loading_state_while_the_api_answers(page, site: str):
    page.goto(site + "/")
    search(page, str(SLOW_USER))
    loading = page.locator("#loading")
    loading.wait_for(state="visible")
    assert "Loading recommendations" in loading.inner_text()
    assert page.get_by_role("button", name="Get Recommendations").is_disabled()
    page.get_by_test_id("recommendation-card").first.wait_for()
    assert not loading.is_visible()
    assert page.get_by_role("button", name="Get Recommendations").is_enabled()
    assert [card["probability"] for card in cards_of(page)] == ["90.0%", "50.0%", "5.0%"]


def test_product_names_are_text_not_html(page, site: str):
    page.goto(site + "/")
    search(page, "4")
    page.get_by_test_id("recommendation-card").first.wait_for()
    assert cards_of(page)[0] == {"name": XSS_NAME, "probability": "99.9%", "id": "ID: 1"}
    assert cards_of(page)[1]["probability"] == "0.0%"
    assert page.locator("#cards img").count() == 0
    assert page.evaluate("window.pwned") is None


def test_phone_sized_screen(browser, site: str, tmp_path: Path):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    try:
        page.goto(site + "/")
        page.get_by_label("User ID").fill("42")
        page.get_by_role("button", name="Get Recommendations").tap()
        page.get_by_test_id("recommendation-card").first.wait_for()
        assert len(cards_of(page)) == 3
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        boxes = [card.bounding_box() for card in page.get_by_test_id("recommendation-card").all()]
        assert len({round(box["x"]) for box in boxes}) == 1  # one column
        assert all(box["x"] >= 0 and box["x"] + box["width"] <= 390 for box in boxes)
        button = page.get_by_role("button", name="Get Recommendations").bounding_box()
        assert button["height"] >= 44  # a comfortable touch target
        screenshot = tmp_path / "phone.png"
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        context.close()
    width, height = png_size(screenshot)
    assert width == 390 * 2
    assert height >= 844 * 2


def test_page_asks_for_a_key_when_config_has_none(page, keyless_site: str):
    page.goto(keyless_site + "/")
    key_field = page.get_by_label("API key")
    key_field.wait_for(state="visible")
    key_field.fill("wrong-key")
    search(page, "42")
    error = page.get_by_role("alert")
    error.wait_for()
    assert error.inner_text() == "The API key was not accepted: invalid API key"
    key_field.fill(KEY)
    search(page, "42")
    page.get_by_test_id("recommendation-card").first.wait_for()
    assert len(cards_of(page)) == 3
    page.reload()  # the key is remembered for the tab (sessionStorage), not beyond
    # The page fills the field only after it has read /config.json: wait for that, do not race it.
    expect(page.get_by_label("API key")).to_have_value(KEY)


def test_anonymous_server_needs_no_key_field(page, anonymous_site: str):
    page.goto(anonymous_site + "/")
    search(page, "42")
    page.get_by_test_id("recommendation-card").first.wait_for()
    assert len(cards_of(page)) == 3
    assert not page.locator("#api-key-field").is_visible()


def similar_cards_of(page) -> list[dict[str, str]]:
    return [
        {
            "name": card.locator(".product-name").inner_text(),
            "where": card.locator(".where").inner_text(),
            "score": card.locator(".score").inner_text(),
        }
        for card in page.get_by_test_id("similar-card").all()
    ]


def test_clicking_a_product_shows_what_customers_also_buy(page, site: str, tmp_path: Path):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(site + "/")
    search(page, "42")
    page.get_by_test_id("recommendation-card").first.wait_for()
    assert not page.locator("#similar").is_visible()  # nothing clicked yet

    page.get_by_test_id("recommendation-card").first.click()
    page.get_by_test_id("similar-card").first.wait_for()
    assert page.locator("#similar-title").inner_text() == "Customers also buy"
    assert page.locator("#similar-for").inner_text() == "with Banana"
    assert similar_cards_of(page) == [
        {
            "name": "Organic Strawberries",
            "where": "fresh fruits · produce",
            "score": "bought together score 0.41",
        },
        {
            "name": "Organic Hass Avocado",
            "where": "fresh fruits · produce",
            "score": "bought together score 0.33",
        },
        {"name": XSS_NAME, "where": "cookies cakes · snacks", "score": "bought together score 0.05"},
    ]
    assert page.locator("#similar img").count() == 0 and page.evaluate("window.pwned") is None
    assert any("/similar?product_id=24852&k=4" in url for url in requests)
    assert "selected" in (page.get_by_test_id("recommendation-card").first.get_attribute("class") or "")
    page.screenshot(path=str(tmp_path / "also-buy.png"), full_page=True)

    # the button in another card: a product nobody buys with anything yet
    page.get_by_role("button", name="Customers also buy with Organic Baby Spinach").click()
    status = page.locator("#similar-status")
    expect(status).to_have_text("No products are often bought with Organic Baby Spinach yet.")
    assert page.get_by_test_id("similar-card").count() == 0
    assert page.locator("#similar-for").inner_text() == "with Organic Baby Spinach"

    search(page, str(SLOW_USER))  # a new search hides the row
    expect(page.locator("#results-title")).to_have_text("Top 3 for user 7")
    assert not page.locator("#similar").is_visible()
