"""The page shows the tier of each item in a real headless Chromium: "Popular pick" badges and a note
for a cold-start list, "New to you" for an explore item, no badge for a scored reorder candidate.
(Browser fixtures and helpers from test_serving_page.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from instarec_assets.backends.recommendations import ITEM_FIELDS
from instarec_assets.backends.serving_store import SqliteRecommendationStore
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.testing import running_server
from instarec_assets_tests.test_serving_page import browser, cards_of, page, search  # noqa: F401

COLD_USER = 77
WARM_USER = 42
ROWS = [
    # user, rank, product, name, aisle, department, probability, explore, source
    (WARM_USER, 1, 24852, "Banana", "fresh fruits", "produce", 0.8123, False, "model"),
    (WARM_USER, 2, 21137, "Organic Strawberries", "fresh fruits", "produce", 0.6549, False, "model"),
    (WARM_USER, 3, 5077, "Sparkling Water", "water seltzer", "beverages", 0.05, True, "explore"),
    (COLD_USER, 1, 13176, "Bag of Organic Bananas", "fresh fruits", "produce", 0.1512, False, "popular"),
    (COLD_USER, 2, 27845, "Organic Whole Milk", "milk", "dairy eggs", 0.0911, False, "popular"),
    (COLD_USER, 3, 21903, "Organic Baby Spinach", "packaged vegetables fruits", "produce", 0.0712, False, "popular"),
]  # fmt: skip
NAMES = ("user_id", *ITEM_FIELDS)  # the columns of ROWS


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("page-cold-start") / "recommendations.sqlite"
    table = pa.table({name: [row[i] for row in ROWS] for i, name in enumerate(NAMES)})
    with SqliteRecommendationStore(path) as store:
        store.load(table, model_version="xgb-test", batch="2025-01-06")
    settings = ServingSettings(allow_anonymous=True, rate_limit=1000)
    api = ServingApi(settings, store=SqliteRecommendationStore(path, read_only=True), static=True)
    with running_server(api) as url:
        yield url


def badges_of(opened) -> list[str]:
    return [
        card.get_by_test_id("tier-badge").inner_text() if card.get_by_test_id("tier-badge").count() else ""
        for card in opened.get_by_test_id("recommendation-card").all()
    ]


def test_a_cold_start_list_shows_popular_picks(page, site: str, tmp_path: Path):  # noqa: F811
    page.goto(site + "/")
    search(page, str(COLD_USER))
    page.get_by_test_id("recommendation-card").first.wait_for()
    assert [card["name"] for card in cards_of(page)] == [
        "Bag of Organic Bananas",
        "Organic Whole Milk",
        "Organic Baby Spinach",
    ]
    assert badges_of(page) == ["Popular pick"] * 3
    assert page.locator("#results-tier").is_visible()
    assert page.locator("#results-tier").inner_text().startswith("Popular picks:")
    first = page.get_by_test_id("recommendation-card").first
    assert first.locator(".probability span").inner_text() == "popularity"
    page.screenshot(path=str(tmp_path / "cold-start.png"), full_page=True)

    search(page, str(WARM_USER))  # a scored list: the note goes, only the explore item has a badge
    page.get_by_text("Sparkling Water").wait_for()
    assert badges_of(page) == ["", "", "New to you"]
    assert not page.locator("#results-tier").is_visible()
    assert first.locator(".probability span").inner_text() == "purchase probability"
