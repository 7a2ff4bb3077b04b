"""The SQLite serving store against a real SQLite file in tmp_path."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from instarec_assets.backends.recommendations import iter_user_lists
from instarec_assets.backends.serving_store import (
    Recommendation,
    RecommendationStore,
    ServingStoreError,
    SqliteRecommendationStore,
    open_store,
)
from instarec_assets.backends.testing import recommendations_table, tag_of
from instarec_assets.serving.lookup import SqliteLookup
from instarec_assets_tests.serving_helpers import read_while_loading

BATCH = "2025-01-06"
ROWS = [
    # user_id, rank, product_id, product_name, aisle, department, probability, explore
    (7, 2, 13176, "Bag of Organic Bananas", "fresh fruits", "produce", 0.612345678901234, False),
    (7, 1, 24852, "Banana", "fresh fruits", "produce", 0.7310585786300049, False),
    (9, 1, 21137, "Organic Strawberries", "fresh fruits", "produce", 0.25, False),
    (7, 3, 47209, "Organic Hass Avocado · Größe L", "fresh fruits", "produce", 0.1, True),
]


def _small_table() -> pa.Table:
    columns = list(zip(*ROWS, strict=True))
    names = ["user_id", "rank", "product_id", "product_name", "aisle", "department", "probability", "explore"]
    return pa.table(dict(zip(names, columns, strict=True)))


@pytest.fixture
def store(tmp_path: Path) -> SqliteRecommendationStore:
    with SqliteRecommendationStore(tmp_path / "serving" / "recommendations.sqlite") as opened:
        yield opened


def test_load_then_top_k_returns_exact_rows_by_rank(store: SqliteRecommendationStore):
    assert isinstance(store, RecommendationStore)
    assert store.current_version() is None
    assert store.top_k(7, 10) is None

    report = store.load(_small_table(), "xgb-2025-01-06", batch=BATCH)

    assert (report.users, report.rows, report.previous_version) == (2, 4, None)
    assert store.current_version() == report.version
    result = store.top_k(7, 10)
    assert result is not None
    assert (result.user_id, result.model_version, result.version) == (7, "xgb-2025-01-06", report.version)
    assert result.items == (
        Recommendation(1, 24852, "Banana", "fresh fruits", "produce", 0.7310585786300049, False),
        Recommendation(
            2, 13176, "Bag of Organic Bananas", "fresh fruits", "produce", 0.612345678901234, False
        ),
        Recommendation(
            3, 47209, "Organic Hass Avocado · Größe L", "fresh fruits", "produce", 0.1, True, "explore"
        ),
    )
    assert [item.rank for item in store.top_k(7, 2).items] == [1, 2]
    assert store.top_k(9, 10).items[0].probability == 0.25
    assert store.top_k(8, 10) is None
    assert store.top_k(7, 1).to_dict()["recommendations"] == [
        {
            "rank": 1,
            "product_id": 24852,
            "product_name": "Banana",
            "aisle": "fresh fruits",
            "department": "produce",
            "probability": 0.7310585786300049,
            "explore": False,
            "source": "model",
        }
    ]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        store.top_k(7, 0)


def test_file_is_in_wal_mode_and_opens_read_only(store: SqliteRecommendationStore, tmp_path: Path):
    store.load(_small_table(), "m1", batch=BATCH)
    raw = sqlite3.connect(store.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()

    reader = SqliteRecommendationStore(store.path, read_only=True)
    try:
        assert reader.journal_mode() == "wal"
        assert reader.top_k(9, 10).items[0].product_id == 21137
        assert reader.current_version() == store.current_version()
        with pytest.raises(ServingStoreError, match="read-only"):
            reader.load(_small_table(), "m2", batch=BATCH)
        with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only|attempt to write"):
            reader._reader().execute("DELETE FROM current_version")
    finally:
        reader.close()

    with pytest.raises(ServingStoreError, match="does not exist"):
        SqliteRecommendationStore(tmp_path / "missing.sqlite", read_only=True).top_k(1, 10)


def test_second_load_switches_version_and_drops_the_old_table(tmp_path: Path):
    store = SqliteRecommendationStore(tmp_path / "recommendations.sqlite", keep_versions=1)
    first = store.load(recommendations_table(range(1, 51), tag=1), "model-1", batch=BATCH)
    assert store.version_tables() == ["recommendations_v1"]

    second = store.load(recommendations_table(range(21, 81), tag=2), "model-2", batch=BATCH)

    assert second.previous_version == first.version
    assert second.removed_versions == (first.version,)
    assert store.current_version() == second.version
    assert store.version_tables() == ["recommendations_v2"]  # the old version's table is gone
    assert store.top_k(10, 10) is None  # only in the first version
    result = store.top_k(30, 10)
    assert result.model_version == "model-2"
    assert {tag_of(item.product_id) for item in result.items} == {2}
    assert store.current_info()["users"] == 60
    assert [record.version for record in store.versions()] == [second.version]
    store.close()


def test_readers_never_see_a_half_loaded_version(store: SqliteRecommendationStore):
    """Reader threads query in a loop while a larger load runs: every list is complete old or complete new."""
    old_users = range(1, 2001)
    store.load(recommendations_table(old_users, tag=1), "model-1", batch=BATCH)
    reader = SqliteRecommendationStore(store.path, read_only=True)
    try:
        report, watch = read_while_loading(
            [reader] * 3,
            old_users,
            lambda: store.load(recommendations_table(range(1, 10001), tag=2), "model-2", batch=BATCH),
        )
    finally:
        reader.close()

    assert report.users == 10000
    watch.assert_old_then_new_only()


def test_ten_thousand_users_load_in_a_few_seconds_and_read_fast(store: SqliteRecommendationStore):
    report = store.load(recommendations_table(range(1, 10001), tag=1), "model-1", batch=BATCH)
    assert (report.users, report.rows) == (10000, 100000)
    assert report.seconds < 5, report.as_metadata()

    users = [random.Random(1).randint(1, 10000) for _ in range(5000)]
    began = time.perf_counter()
    for user in users:
        assert store.top_k(user, 10) is not None
    per_read_ms = (time.perf_counter() - began) / len(users) * 1000
    assert per_read_ms < 1.0, f"{per_read_ms:.3f} ms per top_k"


def test_batches_dataframes_and_tables_load_the_same(tmp_path: Path):
    table = recommendations_table(range(1, 301), tag=3).drop_columns(["model_version"])
    shuffled = table.take(pa.array(random.Random(0).sample(range(table.num_rows), table.num_rows)))
    inputs = {
        "table": shuffled,
        "reader": pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=7)),
        "dataframe": table.to_pandas(),
        "dataframes": [table.slice(0, 1005).to_pandas(), table.slice(1005).to_pandas()],
    }
    expected = None
    for name, value in inputs.items():
        with SqliteRecommendationStore(tmp_path / f"{name}.sqlite") as store:
            report = store.load(value, "model-3", batch=BATCH)
            lists = [store.top_k(user, 10) for user in (1, 100, 101, 300)]
        assert report.rows == 3000, name
        got = [(result.user_id, result.items) for result in lists]
        expected = expected or got
        assert got == expected, name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["aisle"]), "missing column"),
        (
            lambda t: t.set_column(1, "rank", pa.array([53] + [2] * (t.num_rows - 1), pa.int64())),
            "rank must be 1..52",
        ),
        (lambda t: pa.concat_tables([t, t.slice(0, 1)]), "rank 1 more than once"),
        (lambda t: t.set_column(3, "product_name", pa.array([None] * t.num_rows, pa.string())), "null"),
        (
            lambda t: t.set_column(0, "user_id", pa.array([0] * t.num_rows, pa.int64())),
            "user_id must be positive",
        ),
        (lambda t: t.set_column(6, "probability", pa.array([1.5] * t.num_rows)), "probability"),
        (lambda t: t.set_column(2, "product_id", pa.array(["x"] * t.num_rows)), "product_id"),
        (lambda t: t.slice(0, 0), "no recommendations"),
    ],
)
def test_bad_input_is_rejected_and_the_current_version_stays(
    store: SqliteRecommendationStore, change, message
):
    good = recommendations_table(range(1, 4), tag=1)
    store.load(good, "model-1", batch=BATCH)
    before = store.current_version()

    with pytest.raises(ServingStoreError, match=message):
        store.load(change(good), "model-1", batch=BATCH)

    assert store.current_version() == before
    assert store.version_tables() == ["recommendations_v1"]
    assert store.top_k(2, 10).model_version == "model-1"


def test_a_load_failing_in_a_later_batch_leaves_nothing_behind(store: SqliteRecommendationStore):
    store.load(recommendations_table(range(1, 4), tag=1), "model-1", batch=BATCH)

    def batches():
        yield recommendations_table(range(1, 100), tag=2)
        yield recommendations_table(range(50, 60), tag=2)  # users seen in the first batch again

    with pytest.raises(ServingStoreError, match="non-adjacent batches"):
        store.load(batches(), "model-2", batch=BATCH)
    assert store.version_tables() == ["recommendations_v1"]
    assert store.top_k(1, 10).model_version == "model-1"


def test_model_version_column_must_match_the_load():
    rows = recommendations_table([1], tag=1)  # model_version column holds "model-1"
    with pytest.raises(ServingStoreError, match="model_version holds 'model-1'"):
        list(iter_user_lists(rows, "model-2"))
    assert len(list(iter_user_lists(pd.DataFrame(rows.to_pandas()), "model-1"))) == 1


def test_user_rows_may_continue_into_the_next_batch():
    table = recommendations_table([1, 2, 3], tag=1)
    # user 2's ranks are split between two batches, out of order
    second_user = table.filter(pc.equal(table["user_id"], 2))
    parts = [
        pa.concat_tables([table.slice(0, 10), second_user.slice(5, 5)]),
        pa.concat_tables([second_user.slice(0, 5), table.slice(20, 10)]),
    ]
    lists = list(iter_user_lists(parts, "model-1"))
    assert [user for user, _ in lists] == [1, 2, 3]
    assert [row[0] for row in lists[1][1]] == list(range(1, 11))


# ---------------------------------------------------------------- batches, retention and rollback
def _load(store: SqliteRecommendationStore, tag: int, batch: str, **kwargs):
    return store.load(recommendations_table(range(1, 6), tag=tag), f"model-{tag}", batch=batch, **kwargs)


def test_newer_and_same_batches_load_and_the_registry_records_them(store: SqliteRecommendationStore):
    first = _load(store, 1, "2024-01-01")
    rerun = _load(store, 2, "2024-01-01")  # the same batch again: a re-run
    newer = _load(store, 3, "2024-01-15")

    assert (first.batch, rerun.batch, newer.batch) == ("2024-01-01", "2024-01-01", "2024-01-15")
    assert newer.as_metadata()["batch"] == "2024-01-15"
    assert store.current_version() == newer.version
    records = store.versions()
    assert [(r.version, r.batch, r.model_version, r.users, r.items, r.active) for r in records] == [
        (newer.version, "2024-01-15", "model-3", 5, 50, True),
        (rerun.version, "2024-01-01", "model-2", 5, 50, False),
        (first.version, "2024-01-01", "model-1", 5, 50, False),
    ]
    assert all(record.loaded_at for record in records)
    assert store.current_info()["batch"] == "2024-01-15"


def test_an_older_batch_is_refused_in_one_line_and_the_active_version_stays(
    store: SqliteRecommendationStore,
):
    active = _load(store, 1, "2024-01-15")

    with pytest.raises(ServingStoreError) as raised:
        _load(store, 2, "2024-01-01")

    assert str(raised.value) == (
        f"serving store {store.path}: refusing to load recommendations from batch 2024-01-01 over the "
        "active version built from batch 2024-01-15 (use allow_older=True / instarec serving activate "
        "to roll back)"
    )
    assert store.current_version() == active.version
    assert [record.version for record in store.versions()] == [active.version]
    assert store.version_tables() == ["recommendations_v1"]  # nothing was written
    assert store.top_k(1, 10).model_version == "model-1"

    older = _load(store, 2, "2024-01-01", allow_older=True)
    assert store.current_version() == older.version
    assert store.top_k(1, 10).model_version == "model-2"
    assert _load(store, 3, "2024-01-02").previous_version == older.version  # compared with the active one


@pytest.mark.parametrize("batch", ["2024-1-15", "20240115", "2024-02-30", "", None])
def test_a_batch_must_be_a_partition_key(store: SqliteRecommendationStore, batch):
    with pytest.raises(ServingStoreError, match="batch must be a landing partition key YYYY-MM-DD"):
        _load(store, 1, batch)
    assert store.current_version() is None


def test_the_store_keeps_the_newest_versions_and_drops_the_rest(tmp_path: Path):
    with SqliteRecommendationStore(tmp_path / "r.sqlite", keep_versions=2) as store:
        reports = [_load(store, tag, f"2024-01-0{tag}") for tag in (1, 2, 3, 4)]
        assert [record.version for record in store.versions()] == [reports[3].version, reports[2].version]
        assert store.version_tables() == ["recommendations_v3", "recommendations_v4"]
        assert reports[2].removed_versions == (reports[0].version,)
        assert reports[3].removed_versions == (reports[1].version,)
    with pytest.raises(ValueError, match="keep_versions must be a positive integer"):
        SqliteRecommendationStore(tmp_path / "r.sqlite", keep_versions=0)


def test_activate_switches_readers_to_a_retained_version_and_refuses_unknown_ones(
    store: SqliteRecommendationStore,
):
    reports = [_load(store, tag, f"2024-01-0{tag}") for tag in (1, 2, 3, 4)]  # keeps 2, 3, 4
    reader = SqliteRecommendationStore(store.path, read_only=True)
    lookup = SqliteLookup(store.path, pointer_ttl_s=0)
    try:
        assert reader.top_k(1, 10).model_version == "model-4"

        record = store.activate(reports[1].version)

        assert (record.version, record.batch, record.active) == (reports[1].version, "2024-01-02", True)
        assert store.current_version() == reports[1].version
        assert reader.top_k(1, 10).model_version == "model-2"
        assert lookup.lookup(1, 10)[0] == "model-2"
        assert [r.active for r in store.versions()] == [False, False, True]

        for unknown in (reports[0].version, "no-such-version"):  # removed by retention, never loaded
            with pytest.raises(ServingStoreError) as raised:
                store.activate(unknown)
            message = str(raised.value)
            assert "\n" not in message
            assert message.startswith(f"serving store {store.path}: version {unknown!r} is not a retained")
        assert store.current_version() == reports[1].version
        with pytest.raises(ServingStoreError, match="read-only"):
            reader.activate(reports[3].version)

        # after the rollback a load compares with the active version's batch, and keeps the newest 3
        newer = _load(store, 5, "2024-01-03")
        assert store.current_version() == newer.version
        assert [r.version for r in store.versions()] == [
            newer.version,
            reports[3].version,
            reports[2].version,
        ]
        assert reader.top_k(1, 10).model_version == "model-5"
    finally:
        reader.close()
        lookup.close()


def test_a_store_written_before_batches_migrates_and_loads_any_batch(tmp_path: Path):
    path = tmp_path / "old.sqlite"
    with SqliteRecommendationStore(path) as store:
        old = _load(store, 1, "2024-01-15")
    raw = sqlite3.connect(path)
    raw.execute("ALTER TABLE store_versions DROP COLUMN batch")  # as the file was before
    raw.commit()
    raw.close()
    reader = SqliteRecommendationStore(path, read_only=True)
    assert [(r.version, r.batch) for r in reader.versions()] == [(old.version, None)]
    reader.close()

    with SqliteRecommendationStore(path) as store:
        report = _load(store, 2, "2024-01-01")  # no batch recorded for the active version: no refusal
        assert [r.batch for r in store.versions()] == ["2024-01-01", None]
        assert report.previous_version == old.version


def test_versions_of_an_empty_store(store: SqliteRecommendationStore):
    assert store.versions() == []
    with pytest.raises(ServingStoreError, match="retained: none"):
        store.activate("x")


def test_open_store_reads_keep_versions_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = {
        "sqlite_path": str(tmp_path / "r.sqlite"),
        "dynamodb_table": "",
        "region": "",
        "endpoint_url": "",
    }
    assert open_store("sqlite", **settings).keep_versions == 3
    monkeypatch.setenv("INSTAREC_SERVING_KEEP_VERSIONS", "5")
    assert open_store("sqlite", **settings).keep_versions == 5
    assert open_store("sqlite", **settings, keep_versions=1).keep_versions == 1
    monkeypatch.setenv("INSTAREC_SERVING_KEEP_VERSIONS", "0")
    with pytest.raises(
        ValueError, match="INSTAREC_SERVING_KEEP_VERSIONS must be a positive integer, not '0'"
    ):
        open_store("sqlite", **settings)
