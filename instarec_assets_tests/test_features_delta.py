"""Feature tables stored as a base plus per-batch deltas (lake/feature_delta.py), on generated data.

Three increments on a full first batch, each published into a real lake layout: every resolved table
equals a full build at that batch row for row; each delta holds only the affected users' (touched
products') rows; a compaction writes whole tables again; forgetting a user rewrites every file of the
chain and the chain resolves to the tables without them; a chain whose earlier file was replaced is
refused.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from instarec_assets.features import CleanSnapshot, FeatureTables, build_features
from instarec_assets.features.incremental import (
    IncrementalResult,
    PreviousFeatures,
    delta_chain,
)
from instarec_assets.lake.duck import attach_filesystem
from instarec_assets.lake.feature_delta import (
    DELTA_METADATA,
    SUPERSEDED,
    delta_info,
    feature_source,
    lake_locate,
)
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.privacy.lake_rewrite import FORGET_ORDERS_TABLE, lake_parquet_files, rewrite_parquet
from instarec_assets_tests.test_features_generated import clean_snapshots_from_landing
from instarec_assets_tests.test_features_incremental import (
    KEYS,
    assert_same_tables,
    read,
    update_last_batch,
)

USERS = 300
TABLES = tuple(KEYS)


@dataclass(frozen=True)
class DeltaLake:
    home: Path
    batches: list[str]
    snapshots: list[CleanSnapshot]
    full: list[FeatureTables]
    increments: list[IncrementalResult]  # batches 2, 3 and 4, each a delta
    previous: list[PreviousFeatures]  # the published tables of each batch

    def uri(self, table: str, batch: int, home: Path | None = None) -> str:
        locations = LakeLocations(env="local", home=str(home or self.home))
        return locations.partition_uri("curated", table, self.batches[batch - 1])


def publish(tables: FeatureTables, home: Path, batch: str, products: str) -> PreviousFeatures:
    """The staged tables copied to their partition paths, as the curated IO manager stores them."""
    locations = LakeLocations(env="local", home=str(home))
    uris = {}
    for table in TABLES:
        uri = Path(locations.partition_uri("curated", table, batch))
        uri.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(getattr(tables, table).path, uri)
        uris[table] = str(uri)
    return PreviousFeatures(**uris, products=products)


def resolved(uri: str, table: str) -> pd.DataFrame:
    with duckdb.connect() as conn:
        frame = conn.execute(f"SELECT * FROM {feature_source(conn, uri)}").df()
    return frame.sort_values(KEYS[table]).reset_index(drop=True)


def full_table(tables: FeatureTables, table: str, drop_user: int | None = None) -> pd.DataFrame:
    frame = read(getattr(tables, table).path)
    if drop_user is not None and "user_id" in frame:
        frame = frame[frame.user_id != drop_user]
    return frame.sort_values(KEYS[table]).reset_index(drop=True)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> DeltaLake:
    generate = pytest.importorskip("instarec_assets.generate")
    root = tmp_path_factory.mktemp("delta")
    generate.generate_dataset(root / "landing", users=USERS, seed=5, batches=4)
    batches = sorted(folder.name for folder in (root / "landing").iterdir() if folder.is_dir())
    snapshots = clean_snapshots_from_landing(root / "landing", root / "clean")
    home = root / "home"
    with duckdb.connect() as conn:
        fulls = [build_features(conn, snapshot, root / f"full{k}") for k, snapshot in enumerate(snapshots, 1)]
        published = [publish(fulls[0], home, batches[0], snapshots[0].products)]
        increments = []
        for k in (2, 3, 4):
            snapshot = snapshots[k - 1]
            chain = delta_chain(conn, published[-1], batches[k - 2], batches[k - 1], max_deltas=8)
            assert chain is not None and chain.chain == tuple(batches[: k - 1])
            result = update_last_batch(conn, snapshot, published[-1], root / f"delta{k}", delta=chain)
            increments.append(result)
            published.append(publish(result.tables, home, batches[k - 1], snapshot.products))
    return DeltaLake(home, batches, snapshots, fulls, increments, published)


@pytest.mark.parametrize("batch", [2, 3, 4])
def test_resolved_chain_equals_full_build(lake: DeltaLake, batch: int) -> None:
    """Batch 2 is a delta on the base, batch 4 the third delta of the chain."""
    for table in TABLES:
        got = resolved(lake.uri(table, batch), table)
        want = full_table(lake.full[batch - 1], table)
        assert not want.empty or table == "training_set", table
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=table)


@pytest.mark.parametrize("batch", [2, 3, 4])
def test_delta_holds_only_what_the_batch_changed(lake: DeltaLake, batch: int) -> None:
    result = lake.increments[batch - 2]
    affected = set(read(result.affected_user_ids.path).user_id)
    touched = set(read(result.touched_product_ids.path).product_id)
    assert 0 < len(affected) < USERS
    with duckdb.connect() as conn:
        for table in TABLES:
            uri = lake.uri(table, batch)
            info = delta_info(conn, uri)
            assert info is not None and info.chain == tuple(lake.batches[: batch - 1]), table
            assert info.batch == lake.batches[batch - 1] and info.deltas == batch - 1
            delta = read(uri)
            key, expected = ("product_id", touched) if table == "product_features" else ("user_id", affected)
            tombstones = delta[delta[SUPERSEDED]]
            assert set(tombstones[key]) == expected, table
            rows = delta[~delta[SUPERSEDED]]
            assert set(rows[key]) <= expected, table
            assert len(rows) < len(read(getattr(lake.full[batch - 1], table).path)), table
    # Set deltas leave the product columns to product_features: every set row of a touched product
    # changes with it, so a delta holding them would hold most of the set.
    columns = set(pq.read_schema(lake.uri("inference_set", batch)).names)
    assert "p_orders" not in columns and {"up_orders", "u_orders", SUPERSEDED} <= columns


def test_compaction_writes_whole_tables(lake: DeltaLake, tmp_path: Path) -> None:
    """With at most two deltas, batch 4 (the third) compacts: whole tables, a base again."""
    snapshot = lake.snapshots[3]
    with duckdb.connect() as conn:
        previous = lake.previous[2]
        assert delta_chain(conn, previous, lake.batches[2], lake.batches[3], max_deltas=2) is None
        assert delta_chain(conn, previous, lake.batches[2], lake.batches[3], max_deltas=3) is not None
        assert delta_chain(conn, lake.previous[0], lake.batches[0], lake.batches[1], max_deltas=0) is None
        result = update_last_batch(conn, snapshot, previous, tmp_path / "compacted", delta=None)
        assert_same_tables(result.tables, lake.full[3])
        for table in TABLES:
            staged = str(getattr(result.tables, table).path)
            assert delta_info(conn, staged) is None
            assert feature_source(conn, staged).startswith("read_parquet(")


def test_forget_removes_the_user_from_every_file_of_the_chain(lake: DeltaLake, tmp_path: Path) -> None:
    """A user with rows in the base and in the latest delta (and so tombstones) is forgotten with the
    privacy rewrite of every lake file; the chain still resolves, to the tables without the user."""
    home = tmp_path / "home"
    shutil.copytree(lake.home, home)
    base_users = set(read(lake.full[0].user_features.path).user_id)
    latest = set(read(lake.increments[-1].affected_user_ids.path).user_id)
    user = min(base_users & latest)
    locations = LakeLocations(env="local", home=str(home))
    with duckdb.connect() as conn:
        conn.execute(
            f"CREATE TEMP TABLE {FORGET_ORDERS_TABLE} AS SELECT DISTINCT order_id::DOUBLE AS order_id "
            "FROM read_parquet($orders) WHERE user_id = $user",
            {"orders": list(lake.snapshots[3].orders), "user": user},
        )
        files = lake_parquet_files(locations)
        rewrites = [rewrite_parquet(conn, locations, uri, user) for uri in files]
    rewritten = {rewrite.target for rewrite in rewrites if rewrite is not None}
    for batch in (1, 4):  # the base and the latest delta (rows and tombstones)
        for table in ("user_features", "user_product_features"):
            assert lake.uri(table, batch, home) in rewritten, (table, batch)
    for uri in files:
        schema = pq.read_schema(uri)
        if "user_id" in schema.names:
            assert user not in set(read(uri).user_id), uri
        if uri.endswith(f"{lake.batches[-1][-2:]}/training_set.parquet"):
            assert DELTA_METADATA.encode() in schema.metadata  # the rewrite kept the chain
    for table in TABLES:
        got = resolved(lake.uri(table, 4, home), table)
        want = full_table(lake.full[3], table, drop_user=user)
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=table)


def test_a_chain_whose_earlier_file_was_replaced_is_refused(lake: DeltaLake, tmp_path: Path) -> None:
    """Batch 3's delta rematerialized as whole tables: batch 4's delta was written on the old one."""
    home = tmp_path / "home"
    shutil.copytree(lake.home, home)
    shutil.copyfile(lake.full[2].user_features.path, lake.uri("user_features", 3, home))
    with duckdb.connect() as conn, pytest.raises(ValueError, match="no longer matches"):
        feature_source(conn, lake.uri("user_features", 4, home))


def test_a_delta_outside_the_lake_layout_needs_locate(lake: DeltaLake, tmp_path: Path) -> None:
    moved = tmp_path / "user_features.parquet"
    shutil.copyfile(lake.uri("user_features", 2), moved)
    with duckdb.connect() as conn:
        with pytest.raises(ValueError, match="outside the lake layout"):
            feature_source(conn, moved)
        locate = lake_locate(lake.uri("user_features", 2), "user_features", lake.batches[1])
        assert feature_source(conn, moved, locate).startswith("(SELECT")


@pytest.mark.aws
def test_a_chain_on_s3_resolves_like_on_disk(lake: DeltaLake, aws_locations: LakeLocations) -> None:
    """The same chain in the curated bucket (moto over HTTP), read through the lake's filesystem."""
    fs = aws_locations.filesystem
    for batch in range(1, 5):
        for table in TABLES:
            fs.put_file(
                lake.uri(table, batch), aws_locations.partition_uri("curated", table, lake.batches[batch - 1])
            )
    with duckdb.connect() as conn:
        attach_filesystem(conn, fs)
        for table in ("product_features", "training_set", "inference_set"):
            uri = aws_locations.partition_uri("curated", table, lake.batches[3])
            assert uri.startswith("s3://")
            got = conn.execute(f"SELECT * FROM {feature_source(conn, uri)}").df()
            got = got.sort_values(KEYS[table]).reset_index(drop=True)
            pd.testing.assert_frame_equal(got, full_table(lake.full[3], table), check_exact=True, obj=table)
