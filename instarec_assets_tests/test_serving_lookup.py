"""The request hot path: the one-statement SQLite reader, the JSON renderer, the query parser."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from instarec_assets.backends.recommendations import SOURCE_CODES
from instarec_assets.backends.serving_store import ServingStoreError, SqliteRecommendationStore
from instarec_assets.backends.testing import recommendations_table, tag_of
from instarec_assets.serving.api import render
from instarec_assets.serving.asgi import parse_query_string
from instarec_assets.serving.lookup import SqliteLookup, StoreLookup, lookup_for


def load(store: SqliteRecommendationStore, users, tag: int) -> None:
    store.load(recommendations_table(users, tag=tag), model_version=f"model-{tag}", batch="2025-01-06")


def test_lookup_matches_the_stores_top_k(tmp_path: Path):
    path = tmp_path / "recommendations.sqlite"
    store = SqliteRecommendationStore(path)
    load(store, range(1, 30), tag=3)
    reader = SqliteRecommendationStore(path, read_only=True)
    lookup = lookup_for(reader)
    assert isinstance(lookup, SqliteLookup)
    for user_id in (1, 7, 29):
        for k in (1, 3, 10, 20):
            model_version, rows = lookup.lookup(user_id, k)
            expected = reader.top_k(user_id, k)
            assert model_version == expected.model_version == "model-3"
            assert rows == [
                (
                    i.rank,
                    i.product_id,
                    i.product_name,
                    i.aisle,
                    i.department,
                    i.probability,
                    SOURCE_CODES[i.source],
                )
                for i in expected.items
            ]
            assert StoreLookup(reader).lookup(user_id, k)[1] == [
                (
                    i.rank,
                    i.product_id,
                    i.product_name,
                    i.aisle,
                    i.department,
                    i.probability,
                    SOURCE_CODES[i.source],
                )
                for i in expected.items
            ]
    assert lookup.lookup(30, 3) is None
    lookup.close()


def test_a_new_version_is_served_right_after_its_load(tmp_path: Path):
    path = tmp_path / "recommendations.sqlite"
    store = SqliteRecommendationStore(path, keep_versions=1)  # each load drops the previous table
    lookup = SqliteLookup(path, pointer_ttl_s=3600)  # only the "no such table" / miss paths can refresh
    with pytest.raises(ServingStoreError, match="does not exist"):
        SqliteLookup(tmp_path / "absent.sqlite").lookup(1, 3)
    assert lookup.lookup(1, 3) is None  # the file exists, nothing loaded yet
    load(store, range(1, 11), tag=1)
    assert lookup.lookup(1, 3)[0] == "model-1"  # a miss re-reads the pointer
    load(store, range(1, 21), tag=2)  # switches, then drops the table of tag 1
    model_version, rows = lookup.lookup(1, 3)
    assert model_version == "model-2"
    assert {tag_of(row[1]) for row in rows} == {2}
    assert lookup.lookup(15, 3)[0] == "model-2"  # a user new in this version
    assert lookup.lookup(25, 3) is None


def test_a_retained_old_table_is_served_until_the_pointer_ttl_then_the_new_one(tmp_path: Path):
    path = tmp_path / "recommendations.sqlite"
    store = SqliteRecommendationStore(path)  # keeps 3 versions: the old table is not dropped
    lookup = SqliteLookup(path, pointer_ttl_s=3600)
    load(store, range(1, 11), tag=1)
    assert lookup.lookup(1, 3)[0] == "model-1"
    load(store, range(1, 11), tag=2)
    assert lookup.lookup(1, 3)[0] == "model-1"  # the cached pointer still names the retained table
    lookup.pointer_ttl_s = 0
    assert lookup.lookup(1, 3)[0] == "model-2"
    store.activate(store.versions()[1].version)  # a rollback is read like a load
    assert lookup.lookup(1, 3)[0] == "model-1"
    lookup.close()


def test_readers_never_see_a_mixed_or_partial_list_while_versions_load(tmp_path: Path):
    path = tmp_path / "recommendations.sqlite"
    store = SqliteRecommendationStore(path)
    users = range(1, 401)
    load(store, users, tag=1)
    lookup = SqliteLookup(path, pointer_ttl_s=0.01)
    stop = threading.Event()
    problems: list[str] = []
    seen_tags: set[int] = set()

    def read() -> None:
        rng = random.Random()
        while not stop.is_set():
            user_id = rng.choice(users)
            found = lookup.lookup(user_id, 10)
            if found is None:
                problems.append(f"user {user_id} missing")
                continue
            model_version, rows = found
            tags = {tag_of(row[1]) for row in rows}
            if [row[0] for row in rows] != list(range(1, 11)) or len(tags) != 1:
                problems.append(f"user {user_id}: ranks {[row[0] for row in rows]}, tags {tags}")
            elif model_version != f"model-{tags.pop()}":
                problems.append(f"user {user_id}: {model_version} with other items")
            else:
                seen_tags.add(tag_of(rows[0][1]))

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for tag in range(2, 7):
            load(store, users, tag=tag)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert problems == []
    assert len(seen_tags) >= 2


RENDER_CASES = [
    ("model-1", [(1, 24852, "Banana", "fresh fruits", "produce", 0.8123, 0)]),
    ("xgb-2025-01-06\u2603", [(1, 1, 'Quote " and \\ backslash', "tab\there", "new\nline", 0.0, 1)]),
    ("m", [(2, 2**53 + 1, "\u00e9\u00e8 \U0001f34c <b>&amp;</b>", "\x00\x1f", "\u2028", 1.0, True)]),
    ("m", [(3, 7, "x", "y", "z", 1e-05, False), (4, 8, "", "", "", 0.1 + 0.2, 0)]),
    ("m", [(1, 9, "cold", "start", "tier", 0.25, 2), (2, 10, "n", "a", "d", 0.5, 1)]),
    ("m", []),
]


@pytest.mark.parametrize(("model_version", "rows"), RENDER_CASES)
def test_render_is_byte_identical_to_json_dumps(model_version: str, rows):
    expected = json.dumps(
        {
            "user_id": 2147483647,
            "model_version": model_version,
            "recommendations": [
                {
                    "rank": rank,
                    "product_id": product_id,
                    "product_name": name,
                    "aisle": aisle,
                    "department": department,
                    "probability": probability,
                    "explore": source == 1,
                    "source": ("model", "explore", "popular")[source],
                }
                for rank, product_id, name, aisle, department, probability, source in rows
            ],
        },
        separators=(",", ":"),
    ).encode()
    assert render(2147483647, model_version, rows) == expected


def test_plain_query_fast_path_equals_parse_qsl():
    rng = random.Random(3)
    alphabet = "user_idk=&0123456789%+;#aé"
    samples = ["user_id=1", "user_id=12&k=3", "user_id=1234567890&k=20", "user_id=01&k=00", "k=3&user_id=1"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 18))) for _ in range(3000)]
    samples.append("&" * 20)
    for text in samples:
        raw = text.encode("utf-8")
        try:
            expected = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, max_num_fields=16)
        except ValueError:  # too many fields
            expected = None
        assert parse_query_string(raw) == expected, text
