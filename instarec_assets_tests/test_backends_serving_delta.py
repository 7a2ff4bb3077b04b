"""Delta versions in the serving stores: only the affected users are written, the rest read through
the base chain; chain limit, retention of bases, activate and forget over a chain.

The same checks run against a real SQLite file and against DynamoDB on the moto server.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import boto3
import pytest

from instarec_assets.backends.dynamodb_store import DynamoDbRecommendationStore
from instarec_assets.backends.serving_store import ServingStoreError, SqliteRecommendationStore, open_store
from instarec_assets.backends.testing import recommendations_table, similar_items_table, tag_of
from instarec_assets.serving.lookup import SqliteLookup
from instarec_assets_tests.aws_fixtures import REGION

WEEKS = ("2025-01-06", "2025-01-13", "2025-01-20", "2025-01-27", "2025-02-03", "2025-02-10")


@pytest.fixture(params=["sqlite", pytest.param("dynamodb", marks=pytest.mark.aws)])
def opener(request, tmp_path: Path):
    """A factory: `opener(**settings)` opens the same store (file or table) each call."""
    if request.param == "sqlite":
        path = tmp_path / "serving" / "recommendations.sqlite"
        return lambda **settings: SqliteRecommendationStore(path, **settings)
    endpoint = request.getfixturevalue("aws_env")
    table = f"instarec-test-delta-{uuid.uuid4().hex[:8]}"
    DynamoDbRecommendationStore(table, endpoint_url=endpoint, region_name=REGION).ensure_table()
    return lambda **settings: DynamoDbRecommendationStore(
        table, endpoint_url=endpoint, region_name=REGION, pointer_ttl_s=0.0, **settings
    )


def _load(store, users, tag: int, week: int, delta: bool = False, ranks: int = 10, **kwargs):
    table = recommendations_table(users, tag=tag, ranks=ranks)
    return store.load(table, f"model-{tag}", batch=WEEKS[week], delta=delta, **kwargs)


def _tag(store, user_id: int, k: int = 52) -> tuple[int, str, int] | None:
    """(tag of the list, its model_version, its length); None for no list."""
    result = store.top_k(user_id, k)
    if result is None:
        return None
    tags = {tag_of(item.product_id) for item in result.items}
    assert len(tags) == 1, f"user {user_id} got a list mixing versions {tags}"
    return tags.pop(), result.model_version, len(result.items)


def test_delta_users_read_their_new_list_and_the_rest_read_through_the_chain(opener):
    store = opener()
    full = _load(store, range(1, 7), tag=1, week=0)
    first = _load(store, [2, 3], tag=2, week=1, delta=True, ranks=4)
    second = _load(store, [3, 7], tag=3, week=2, delta=True)

    assert (first.kind, first.base_version, first.chain_length, first.users) == ("delta", full.version, 2, 2)
    assert (second.kind, second.base_version, second.chain_length) == ("delta", first.version, 3)
    assert (full.kind, full.base_version, full.chain_length) == ("full", None, 1)
    assert second.as_metadata()["kind"] == "delta" and second.as_metadata()["chain_length"] == 3
    assert _tag(store, 1) == (1, "model-1", 10)  # in the full version only
    assert _tag(store, 2) == (2, "model-2", 4)  # the delta's whole (shorter) list, no tail of the base's
    assert _tag(store, 2, k=2) == (2, "model-2", 2)
    assert _tag(store, 3) == (3, "model-3", 10)  # the newest delta wins
    assert _tag(store, 7) == (3, "model-3", 10)  # a user new in a delta
    assert store.top_k(99) is None  # unknown: in no version of the chain
    assert store.top_k(1).version == second.version  # what readers see: the active version
    assert store.chain() == [second.version, first.version, full.version]
    assert store.chain(first.version) == [first.version, full.version]
    assert store.chain(full.version) == [full.version]
    records = {record.version: record for record in store.versions()}
    assert [(r.kind, r.base_version, r.users, r.items) for r in records.values()] == [
        ("delta", first.version, 2, 20),
        ("delta", full.version, 2, 8),
        ("full", None, 6, 60),
    ]
    with pytest.raises(ServingStoreError, match="is not a retained version"):
        store.chain("nope")


def test_sqlite_api_lookup_resolves_through_the_chain(tmp_path: Path):
    path = tmp_path / "recommendations.sqlite"
    store = SqliteRecommendationStore(path)
    _load(store, range(1, 5), tag=1, week=0)
    _load(store, [2], tag=2, week=1, delta=True, ranks=3)
    lookup = SqliteLookup(path)
    model_version, rows = lookup.lookup(2, 52)
    assert (model_version, [row[0] for row in rows]) == ("model-2", [1, 2, 3])
    model_version, rows = lookup.lookup(1, 5)
    assert (model_version, len(rows), {tag_of(row[1]) for row in rows}) == ("model-1", 5, {1})
    assert lookup.lookup(99, 5) is None
    lookup.close()


def test_similar_items_of_a_delta_are_inherited_or_replaced_as_a_whole(opener):
    store = opener()
    full = _load(store, range(1, 4), tag=1, week=0, similar_items=similar_items_table([11, 12], tag=1))
    inherited = _load(store, [2], tag=2, week=1, delta=True)
    assert store.similar(11, 5).version == inherited.version
    assert {tag_of(item.product_id) for item in store.similar(11, 5).items} == {1}
    replaced = _load(store, [3], tag=3, week=2, delta=True, similar_items=similar_items_table([13], tag=3))
    assert {tag_of(item.product_id) for item in store.similar(13, 5).items} == {3}
    assert store.similar(11, 5) is None  # the delta's set replaced the base's whole set
    store.activate(inherited.version)
    assert {tag_of(item.product_id) for item in store.similar(11, 5).items} == {1}
    assert store.similar(13, 5) is None
    assert replaced.extra["similar_products"] == 1 and full.extra["similar_products"] == 2


def test_delta_loads_are_refused_without_a_base_beyond_the_chain_limit_and_from_an_older_batch(opener):
    store = opener(max_delta_chain=2)
    with pytest.raises(ServingStoreError, match="needs an active version to build on") as refused:
        _load(store, [1], tag=1, week=0, delta=True)
    assert "\n" not in str(refused.value)
    assert store.chain() == [] and store.versions() == []
    full = _load(store, range(1, 4), tag=1, week=0)
    _load(store, [1], tag=2, week=1, delta=True)
    top = _load(store, [2], tag=3, week=2, delta=True)
    with pytest.raises(
        ServingStoreError,
        match=r"stack 3 deltas on full version .*INSTAREC_SERVING_MAX_DELTA_CHAIN=2; load a full version",
    ) as refused:
        _load(store, [3], tag=4, week=3, delta=True)
    assert "\n" not in str(refused.value)
    assert store.current_version() == top.version and len(store.versions()) == 3
    with pytest.raises(ServingStoreError, match="refusing to load recommendations from batch 2025-01-06"):
        _load(store, [3], tag=4, week=0, delta=False)
    # the older-batch rule is checked for a delta as for a full load
    store_wide = opener(max_delta_chain=8)
    with pytest.raises(ServingStoreError, match="refusing to load recommendations from batch 2025-01-13"):
        _load(store_wide, [3], tag=4, week=1, delta=True)
    older = _load(store_wide, [3], tag=4, week=1, delta=True, allow_older=True)
    assert store_wide.chain()[-1] == full.version and older.chain_length == 4
    fresh = _load(store, range(1, 4), tag=5, week=3)  # a full load starts a new chain
    assert store.chain() == [fresh.version]
    assert _load(store, [1], tag=6, week=4, delta=True).chain_length == 2


def test_retention_keeps_every_base_of_a_retained_version_and_drops_the_rest(opener):
    store = opener(keep_versions=2)
    base = _load(store, range(1, 4), tag=1, week=0)
    first = _load(store, [1], tag=2, week=1, delta=True)
    second = _load(store, [2], tag=3, week=2, delta=True)
    assert second.removed_versions == ()  # base and first are read through by the active delta
    assert [r.version for r in store.versions()] == [second.version, first.version, base.version]
    full = _load(store, range(1, 4), tag=4, week=3)
    # newest two: full and second; second keeps its chain
    assert full.removed_versions == ()
    assert len(store.versions()) == 4
    store.activate(second.version)
    assert _tag(store, 3) == (1, "model-1", 10) and _tag(store, 1) == (2, "model-2", 10)
    store.activate(full.version)
    newer = _load(store, range(1, 4), tag=5, week=4)
    # newest two: newer and full; nothing retained reads through the old chain any more
    assert set(newer.removed_versions) == {base.version, first.version, second.version}
    assert [r.version for r in store.versions()] == [newer.version, full.version]
    if isinstance(store, DynamoDbRecommendationStore):
        assert set(store.stored_versions()) == {newer.version, full.version}
    else:
        assert len(store.version_tables()) == 2
    assert _tag(store, 1) == (5, "model-5", 10)


def test_activate_a_delta_activates_its_chain_and_a_full_version_its_own(opener):
    store = opener()
    base = _load(store, range(1, 4), tag=1, week=0)
    other = _load(store, range(1, 4), tag=2, week=1)
    store.activate(base.version)
    # a delta on the re-activated older version: `other` lies between it and its base
    delta = _load(store, [2], tag=3, week=2, delta=True)
    assert delta.base_version == base.version and store.chain() == [delta.version, base.version]
    assert _tag(store, 1) == (1, "model-1", 10)  # the base's list, not the newer full version's
    assert _tag(store, 2) == (3, "model-3", 10)
    record = store.activate(other.version)
    assert (record.version, record.kind, store.chain()) == (other.version, "full", [other.version])
    assert _tag(store, 1) == (2, "model-2", 10) and _tag(store, 2) == (2, "model-2", 10)
    record = store.activate(delta.version)
    assert (record.kind, record.base_version, record.active) == ("delta", base.version, True)
    assert store.chain() == [delta.version, base.version]
    assert _tag(store, 1) == (1, "model-1", 10) and _tag(store, 2) == (3, "model-3", 10)


def test_forget_on_a_chain_removes_the_user_from_every_version_and_the_counts_drop(opener):
    store = opener()
    base = _load(store, range(1, 4), tag=1, week=0)
    delta = _load(store, [2, 3], tag=2, week=1, delta=True, ranks=4)
    removed = store.forget_user(2)
    if isinstance(store, DynamoDbRecommendationStore):
        assert removed == {base.version: 1, delta.version: 1}  # items
        assert (store.current_info()["users"], store.current_info()["rows"]) == ("1", "4")  # the pointer
    else:
        assert removed == {base.version: 10, delta.version: 4}  # rows
    assert store.top_k(2) is None  # not read through to the base either
    assert _tag(store, 3) == (2, "model-2", 4) and _tag(store, 1) == (1, "model-1", 10)
    counts = {r.version: (r.users, r.items) for r in store.versions()}
    assert counts == {base.version: (2, 20), delta.version: (1, 4)}
    assert store.forget_user(2) == {}  # nothing left; counts unchanged
    assert {r.version: (r.users, r.items) for r in store.versions()} == counts


def test_open_store_reads_the_chain_limit_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INSTAREC_SERVING_MAX_DELTA_CHAIN", "1")
    store = open_store("sqlite", str(tmp_path / "s.sqlite"), "", REGION, "")
    assert store.max_delta_chain == 1
    assert (
        open_store("sqlite", str(tmp_path / "s.sqlite"), "", REGION, "", max_delta_chain=0).max_delta_chain
        == 0
    )
    _load(store, [1], tag=1, week=0)
    _load(store, [1], tag=2, week=1, delta=True)
    with pytest.raises(ServingStoreError, match="INSTAREC_SERVING_MAX_DELTA_CHAIN=1"):
        _load(store, [1], tag=3, week=2, delta=True)


def test_a_sqlite_file_written_before_deltas_reads_as_before_and_takes_a_delta(tmp_path: Path):
    path = tmp_path / "old.sqlite"
    with SqliteRecommendationStore(path) as store:
        old = _load(store, range(1, 4), tag=1, week=0, similar_items=similar_items_table([11], tag=1))
    raw = sqlite3.connect(path)
    for table, column in (
        ("store_versions", "kind"),
        ("store_versions", "base_id"),
        ("current_version", "chain"),
        ("current_version", "similar_table"),
    ):
        raw.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # as the file was before
    raw.commit()
    raw.close()
    with SqliteRecommendationStore(path, read_only=True) as reader:
        assert _tag(reader, 2) == (1, "model-1", 10)
        assert reader.similar(11, 5).version == old.version
        assert reader.chain() == [old.version]
        assert [(r.version, r.kind, r.base_version) for r in reader.versions()] == [
            (old.version, "full", None)
        ]
    lookup = SqliteLookup(path)
    assert lookup.lookup(2, 3)[0] == "model-1" and lookup.similar(11, 5)[0] == old.version
    lookup.close()
    with SqliteRecommendationStore(path) as store:
        delta = _load(store, [2], tag=2, week=1, delta=True)
        assert store.chain() == [delta.version, old.version]
        assert _tag(store, 2) == (2, "model-2", 10) and _tag(store, 1) == (1, "model-1", 10)
        assert store.similar(11, 5).version == delta.version


@pytest.mark.aws
def test_a_dynamodb_table_switched_before_deltas_reads_as_before_and_takes_a_delta(aws_env: str):
    store = DynamoDbRecommendationStore(
        f"instarec-test-delta-{uuid.uuid4().hex[:8]}",
        endpoint_url=aws_env,
        region_name=REGION,
        pointer_ttl_s=0.0,
    )
    store.ensure_table()
    old = _load(store, range(1, 4), tag=1, week=0, similar_items=similar_items_table([11], tag=1))
    client = boto3.client("dynamodb", endpoint_url=aws_env, region_name=REGION)
    for version, attributes in (
        ("CURRENT", ("kind", "chain", "similar_version")),
        (old.version, ("kind", "similar")),
    ):
        client.update_item(  # as written before deltas
            TableName=store.table_name,
            Key={"user_id": {"N": "0"}, "version": {"S": version}},
            UpdateExpression="REMOVE " + ", ".join(f"#a{index}" for index in range(len(attributes))),
            ExpressionAttributeNames={f"#a{index}": name for index, name in enumerate(attributes)},
        )
    assert _tag(store, 2) == (1, "model-1", 10)
    assert store.similar(11, 5).version == old.version  # an old pointer names its own similar items
    assert store.chain() == [old.version] == store.chain(old.version)
    delta = _load(store, [2], tag=2, week=1, delta=True)
    assert store.chain() == [delta.version, old.version]
    assert _tag(store, 2) == (2, "model-2", 10) and _tag(store, 1) == (1, "model-1", 10)
    assert store.similar(11, 5).version == delta.version
    store.activate(old.version)
    assert store.similar(11, 5).version == old.version and _tag(store, 2) == (1, "model-1", 10)
