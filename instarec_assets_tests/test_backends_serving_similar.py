"""Similar items in the serving stores: loaded with a version, switched, rolled back and removed with it.

The same checks run against a real SQLite file and against DynamoDB on the moto server.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from instarec_assets.backends.dynamodb_store import DynamoDbRecommendationStore
from instarec_assets.backends.serving_store import ServingStoreError, SqliteRecommendationStore
from instarec_assets.backends.similar_items import SimilarItem
from instarec_assets.backends.testing import TAG_SCALE, recommendations_table, similar_items_table
from instarec_assets_tests.aws_fixtures import REGION

BATCH = "2025-01-06"


@pytest.fixture(params=["sqlite", pytest.param("dynamodb", marks=pytest.mark.aws)])
def open_store(request, tmp_path: Path):
    """A factory: `open_store(keep_versions)` opens the same store (file or table) each call."""
    if request.param == "sqlite":
        path = tmp_path / "serving" / "recommendations.sqlite"
        return lambda keep_versions=3: SqliteRecommendationStore(path, keep_versions=keep_versions)
    endpoint = request.getfixturevalue("aws_env")
    table = f"instarec-test-similar-{uuid.uuid4().hex[:8]}"
    DynamoDbRecommendationStore(table, endpoint_url=endpoint, region_name=REGION).ensure_table()
    return lambda keep_versions=3: DynamoDbRecommendationStore(
        table, endpoint_url=endpoint, region_name=REGION, keep_versions=keep_versions
    )


def test_similar_items_load_with_the_version_and_read_back_by_rank(open_store):
    store = open_store()
    assert store.similar(11, 5) is None  # nothing loaded yet
    report = store.load(
        recommendations_table(range(1, 6)),
        "model-1",
        batch=BATCH,
        similar_items=similar_items_table([11, 12]),
    )
    assert (report.extra["similar_products"], report.extra["similar_rows"]) == (2, 10)

    result = store.similar(11, 3)
    assert (result.product_id, result.version) == (11, report.version)
    assert result.items == (
        SimilarItem(1, TAG_SCALE + 1101, f"Similar {TAG_SCALE + 1101}", "aisle 1", "department 1", 0.5),
        SimilarItem(2, TAG_SCALE + 1102, f"Similar {TAG_SCALE + 1102}", "aisle 2", "department 1", 1 / 3),
        SimilarItem(3, TAG_SCALE + 1103, f"Similar {TAG_SCALE + 1103}", "aisle 3", "department 1", 0.25),
    )
    assert len(store.similar(12, 20).items) == 5
    assert store.similar(13, 5) is None  # no list for this product
    assert store.top_k(3, 10).items[0].product_id == TAG_SCALE + 31  # recommendations unchanged


def test_a_version_loaded_without_similar_items_has_none(open_store):
    store = open_store()
    store.load(recommendations_table([1]), "model-1", batch=BATCH, similar_items=similar_items_table([11]))
    assert store.similar(11, 5) is not None
    store.load(recommendations_table([1], tag=2), "model-2", batch=BATCH)
    assert store.similar(11, 5) is None  # the active version has no similar items
    assert store.top_k(1, 1).model_version == "model-2"


def test_similar_items_switch_roll_back_and_are_removed_with_their_version(open_store):
    store = open_store(keep_versions=2)
    reports = [
        store.load(
            recommendations_table([1], tag=tag),
            f"model-{tag}",
            batch=f"2025-01-0{tag}",
            similar_items=similar_items_table([11, 12], tag=tag),
        )
        for tag in (1, 2, 3)
    ]
    assert store.similar(11, 1).items[0].product_id == 3 * TAG_SCALE + 1101
    assert reports[2].removed_versions == (reports[0].version,)

    store.activate(reports[1].version)  # a rollback switches the similar items too
    reader = open_store(keep_versions=2)
    assert reader.similar(11, 1).items[0].product_id == 2 * TAG_SCALE + 1101
    assert reader.similar(11, 1).version == reports[1].version

    if isinstance(store, SqliteRecommendationStore):
        tables = {row[0] for row in store._reader().execute("SELECT name FROM sqlite_master")}
        assert {"similar_v2", "similar_v3"} <= tables and "similar_v1" not in tables
    else:
        # one item per user and per product for each retained version; none of the removed one
        assert store.stored_versions() == {reports[1].version: 3, reports[2].version: 3}


def test_bad_similar_items_are_refused_in_one_line_and_the_active_version_stays(open_store):
    store = open_store()
    first = store.load(
        recommendations_table([1]), "model-1", batch=BATCH, similar_items=similar_items_table([11])
    )
    itself = similar_items_table([11]).set_column(2, "similar_product_id", pa.array([11, 1, 2, 3, 4]))
    with pytest.raises(ServingStoreError, match=r"^similar items list product 11 as similar to itself$"):
        store.load(recommendations_table([1], tag=2), "model-2", batch=BATCH, similar_items=itself)
    with pytest.raises(ServingStoreError, match=r"^similar items are missing column\(s\): score$"):
        store.load(
            recommendations_table([1], tag=2),
            "model-2",
            batch=BATCH,
            similar_items=similar_items_table([11]).drop_columns(["score"]),
        )
    ranks = similar_items_table([11]).set_column(1, "rank", pa.array([1, 2, 3, 4, 21]))
    with pytest.raises(ServingStoreError, match=r"rank must be 1\.\.20; found 21"):
        store.load(recommendations_table([1], tag=2), "model-2", batch=BATCH, similar_items=ranks)
    assert store.current_version() == first.version
    assert store.similar(11, 1).items[0].product_id == TAG_SCALE + 1101
