"""update_features against a full build_features at the same batch, row for row, on generated data.

Every comparison is exact (floats included): recomputed rows run the full build's SQL on the same rows,
carried rows are copies, and product rows aggregate the same integer sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from instarec_assets.features import CleanSnapshot, FeatureTables, build_features
from instarec_assets.features.incremental import (
    ADDITIVE,
    MAX_RECOVERED_SUM,
    REAGGREGATED,
    IncrementalResult,
    PreviousFeatures,
    update_features,
    update_last_batch,
)
from instarec_assets_tests.test_features_generated import clean_snapshots_from_landing

USERS = 300
KEYS = {
    "user_features": ["framing", "user_id"],
    "product_features": ["framing", "product_id"],
    "user_product_features": ["framing", "user_id", "product_id"],
    "training_set": ["eval_set", "user_id", "product_id"],
    "inference_set": ["eval_set", "user_id", "product_id"],
}
LEVELS = ("user_features", "product_features", "user_product_features")


def read(
    path: Path | str, sql: str = "SELECT * FROM read_parquet(?, hive_partitioning = false)"
) -> pd.DataFrame:
    with duckdb.connect() as conn:
        return conn.execute(sql, [str(path)]).df()


def assert_same_tables(incremental: FeatureTables, full: FeatureTables) -> None:
    for name, keys in KEYS.items():
        got, want = read(getattr(incremental, name).path), read(getattr(full, name).path)
        assert not want.empty or name == "training_set", name
        assert getattr(incremental, name).row_count == len(want), name
        if name not in LEVELS:  # the sets carry no order; the level tables are written ORDER BY keys
            got = got.sort_values(keys).reset_index(drop=True)
            want = want.sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=name)


def full(conn: duckdb.DuckDBPyConnection, snapshot: CleanSnapshot, scratch: Path) -> FeatureTables:
    return build_features(conn, snapshot, scratch)


@dataclass(frozen=True)
class Chain:
    snapshots: list[CleanSnapshot]
    full: list[FeatureTables]
    incremental: list[IncrementalResult]  # for batches 2 and 3


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    generate = pytest.importorskip("instarec_assets.generate")
    root = tmp_path_factory.mktemp("incremental")
    generate.generate_dataset(root / "landing", users=USERS, seed=3, batches=3)
    snapshots = clean_snapshots_from_landing(root / "landing", root / "lake")
    with duckdb.connect() as conn:
        fulls = [full(conn, snapshot, root / f"full{k}") for k, snapshot in enumerate(snapshots, 1)]
        results: list[IncrementalResult] = []
        previous = PreviousFeatures.from_tables(fulls[0], products=snapshots[0].products)
        for k in (2, 3):
            snapshot = snapshots[k - 1]
            result = update_last_batch(conn, snapshot, previous, root / f"incremental{k}")
            results.append(result)
            previous = PreviousFeatures.from_tables(result.tables, products=snapshot.products)
        leftovers = conn.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
        assert leftovers == []
    return Chain(snapshots=snapshots, full=fulls, incremental=results)


@pytest.mark.parametrize("batch", [2, 3])
def test_incremental_equals_full_build(chain: Chain, batch: int) -> None:
    """Batch 2 from the full batch-1 tables, batch 3 from the incremental batch-2 tables."""
    assert chain.incremental[batch - 2].product_update == ADDITIVE
    assert_same_tables(chain.incremental[batch - 2].tables, chain.full[batch - 1])


def test_re_aggregating_the_touched_products_gives_the_same_tables(chain: Chain, tmp_path: Path) -> None:
    """The path taken when a previous product sum is too large to recover: every buyer's rows."""
    snapshot = chain.snapshots[1]
    previous = PreviousFeatures.from_tables(chain.full[0], products=chain.snapshots[0].products)
    with duckdb.connect() as conn:
        result = update_last_batch(conn, snapshot, previous, tmp_path, additive=False)
    assert result.product_update == REAGGREGATED
    assert_same_tables(result.tables, chain.full[1])


def test_a_sum_below_two_to_the_23_is_recovered_exactly_from_its_float_ratio() -> None:
    """What the additive update relies on: round(float32(s / n) * n) == s for s < 2^23, whatever n
    (the float's relative error 2^-24 times s stays below 1/2); not so far above it."""
    rng = np.random.default_rng(0)
    sums = rng.integers(1, MAX_RECOVERED_SUM, 2_000_000)
    counts = np.concatenate(
        [
            np.maximum(1, (sums[:1_000_000] * rng.random(1_000_000)).astype(np.int64)),
            rng.integers(1, 1 << 31, 1_000_000),
        ]
    )
    ratios = (sums / counts).astype(np.float32)
    assert np.array_equal(np.round(ratios.astype(np.float64) * counts).astype(np.int64), sums)
    big = rng.integers(1 << 30, 1 << 31, 100_000)
    big_counts = np.maximum(1, (big * rng.random(big.size)).astype(np.int64))
    recovered = np.round((big / big_counts).astype(np.float32).astype(np.float64) * big_counts)
    assert not np.array_equal(recovered.astype(np.int64), big)


def _differing(before: Path, after: Path, column: str) -> set[int]:
    """Ids (`column`) of the rows that are not identical in both files."""
    a, b = f"read_parquet('{before}')", f"read_parquet('{after}')"
    sql = (
        f"SELECT DISTINCT {column} FROM ((SELECT * FROM {a} EXCEPT SELECT * FROM {b})"
        f" UNION ALL (SELECT * FROM {b} EXCEPT SELECT * FROM {a}))"
    )
    with duckdb.connect() as conn:
        return {row[0] for row in conn.execute(sql).fetchall()}


@pytest.mark.parametrize("batch", [2, 3])
def test_touched_counts_are_what_the_batch_brought(chain: Chain, batch: int) -> None:
    result = chain.incremental[batch - 2]
    snapshot = chain.snapshots[batch - 1]
    orders = read(snapshot.orders[-1])
    lines = read(snapshot.order_products[-1])
    all_orders = pd.concat([read(uri) for uri in snapshot.orders])
    line_users = set(all_orders[all_orders.order_id.isin(set(lines.order_id))].user_id)
    batch_users = set(orders.user_id) | line_users
    assert result.batch_users == len(batch_users) > 0
    affected = set(read(result.affected_user_ids.path).user_id)
    assert len(affected) == result.affected_users == result.affected_user_ids.row_count
    assert batch_users <= affected
    assert (
        result.affected_users - result.batch_users <= result.moved_product_buyers + result.fallback_gap_users
    )
    # Every user or product whose rows changed between the two full builds was recomputed.
    before, after = chain.full[batch - 2], chain.full[batch - 1]
    for name in ("user_features", "user_product_features"):
        path = getattr(before, name).path, getattr(after, name).path
        assert _differing(*path, "user_id") <= affected, name
    touched = set(read(result.touched_product_ids.path).product_id)
    assert len(touched) == result.touched_products
    changed = _differing(before.product_features.path, after.product_features.path, "product_id")
    assert set(lines.product_id) <= touched  # every batch line is serving history
    assert changed <= touched
    assert result.moved_products > 0 and result.catalog_changed_products >= result.moved_products
    # Touched beyond a real change only through the catalog (renames, moves of unbought products).
    assert len(touched - changed) <= result.catalog_changed_products
    assert result.affected_users < USERS  # the batch does not touch everyone
    assert set(result.seconds) >= {"scope", "users", "products", "level_tables", "sets"}


def _write(conn: duckdb.DuckDBPyConnection, sql: str, path: Path, params: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet)", params)
    return str(path)


def test_catalog_move_and_rename_in_the_increment(chain: Chain, tmp_path: Path) -> None:
    """Batch 2 with the most bought product moved to another aisle and department, one product renamed."""
    first, second = chain.snapshots[0], chain.snapshots[1]
    popular, buyers = read(
        chain.full[0].user_product_features.path,
        "SELECT product_id, count(DISTINCT user_id) FROM read_parquet(?) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1",
    ).iloc[0]
    renamed = int(read(first.products, "SELECT max(product_id) FROM read_parquet(?)").iloc[0, 0])
    with duckdb.connect() as conn:
        products = _write(
            conn,
            "SELECT * REPLACE ("
            "  CASE WHEN product_id = $popular THEN (aisle_id % 134) + 1 ELSE aisle_id END AS aisle_id,"
            "  CASE WHEN product_id = $popular THEN (department_id % 21) + 1 ELSE department_id END"
            "    AS department_id,"
            "  CASE WHEN product_id = $renamed THEN product_name || ' (new)' ELSE product_name END"
            "    AS product_name)"
            " FROM read_parquet($source)",
            tmp_path / "clean_products.parquet",
            {"popular": int(popular), "renamed": renamed, "source": second.products},
        )
        snapshot = CleanSnapshot(
            orders=second.orders,
            order_products=second.order_products,
            products=products,
            aisles=second.aisles,
            departments=second.departments,
        )
        want = full(conn, snapshot, tmp_path / "full")
        result = update_last_batch(
            conn,
            snapshot,
            PreviousFeatures.from_tables(chain.full[0], products=first.products),
            tmp_path / "incremental",
        )
    assert_same_tables(result.tables, want)
    touched = set(read(result.touched_product_ids.path).product_id)
    assert {int(popular), renamed} <= touched
    assert result.moved_product_buyers >= buyers > USERS // 4  # every buyer's aisle share moved
    affected = set(read(result.affected_user_ids.path).user_id)
    assert (
        set(read(chain.full[0].user_product_features.path).query(f"product_id == {popular}").user_id)
        <= affected
    )


def test_batch_of_new_users_only(chain: Chain, tmp_path: Path) -> None:
    """Batch 2 cut down to the users who first appear in it, with batch 1's catalog."""
    first, second = chain.snapshots[0], chain.snapshots[1]
    with duckdb.connect() as conn:
        orders = _write(
            conn,
            "SELECT * FROM read_parquet($batch)"
            " WHERE user_id NOT IN (SELECT user_id FROM read_parquet($first))",
            tmp_path / "clean_orders.parquet",
            {"batch": second.orders[-1], "first": first.orders[0]},
        )
        lines = _write(
            conn,
            "SELECT * FROM read_parquet($batch)"
            " WHERE order_id IN (SELECT order_id FROM read_parquet($orders))",
            tmp_path / "clean_order_products.parquet",
            {"batch": second.order_products[-1], "orders": orders},
        )
        snapshot = CleanSnapshot(
            orders=[*first.orders, orders],
            order_products=[*first.order_products, lines],
            products=first.products,
            aisles=first.aisles,
            departments=first.departments,
        )
        want = full(conn, snapshot, tmp_path / "full")
        result = update_features(
            conn,
            snapshot,
            PreviousFeatures.from_tables(chain.full[0], products=first.products),
            [orders],
            [lines],
            tmp_path / "incremental",
        )
    assert_same_tables(result.tables, want)
    new_users = set(read(orders).user_id)
    assert 0 < result.batch_users == len(new_users)
    assert result.moved_products == result.catalog_changed_products == result.moved_product_buyers == 0
    existing = set(read(result.affected_user_ids.path).user_id) - new_users
    assert len(existing) == result.fallback_gap_users  # only through the global fallback gap, if it moved
    assert result.affected_users == len(new_users) + result.fallback_gap_users


def test_global_fallback_gap_moves_single_order_users(chain: Chain, tmp_path: Path) -> None:
    """A user whose only order is a train order gets the mean gap over all orders as serving
    t_days_since_prior; batch 2 with every gap at 100 days (beyond the clean zone's 30, which the feature
    SQL does not check) moves that mean, so the user is recomputed."""
    first, second = chain.snapshots[0], chain.snapshots[1]
    single_user, single_order = 9_999_999, 2_000_000_000
    with duckdb.connect() as conn:
        extra_orders = _write(
            conn,
            "SELECT * REPLACE ($user AS user_id, $order AS order_id, 'train' AS eval_set,"
            " 1::SMALLINT AS order_number, NULL::TINYINT AS days_since_prior_order)"
            " FROM read_parquet($source) LIMIT 1",
            tmp_path / "lake" / "extra_orders.parquet",
            {"user": single_user, "order": single_order, "source": first.orders[0]},
        )
        extra_lines = _write(
            conn,
            "SELECT * REPLACE ($order AS order_id) FROM read_parquet($source) ORDER BY order_id, product_id LIMIT 3",
            tmp_path / "lake" / "extra_lines.parquet",
            {"order": single_order, "source": first.order_products[0]},
        )
        start = CleanSnapshot(
            orders=[*first.orders, extra_orders],
            order_products=[*first.order_products, extra_lines],
            products=first.products,
            aisles=first.aisles,
            departments=first.departments,
        )
        long_gaps = _write(
            conn,
            "SELECT * REPLACE (CASE WHEN days_since_prior_order IS NULL THEN NULL ELSE 100 END::TINYINT"
            " AS days_since_prior_order) FROM read_parquet($source)",
            tmp_path / "lake" / "batch_orders.parquet",
            {"source": second.orders[-1]},
        )
        snapshot = CleanSnapshot(
            orders=[*start.orders, long_gaps],
            order_products=[*start.order_products, second.order_products[-1]],
            products=second.products,
            aisles=second.aisles,
            departments=second.departments,
        )
        gap = "SELECT round(avg(days_since_prior_order)) FROM read_parquet($orders)"
        before = conn.execute(gap, {"orders": list(start.orders)}).fetchall()[0][0]
        after = conn.execute(gap, {"orders": list(snapshot.orders)}).fetchall()[0][0]
        assert before != after  # the precondition this test is about
        previous = full(conn, start, tmp_path / "start")
        want = full(conn, snapshot, tmp_path / "full")
        result = update_features(
            conn,
            snapshot,
            PreviousFeatures.from_tables(previous, products=start.products),
            [long_gaps],
            [snapshot.order_products[-1]],
            tmp_path / "incremental",
        )
    assert_same_tables(result.tables, want)
    assert result.fallback_gap_users == 1
    assert single_user in set(read(result.affected_user_ids.path).user_id)
    serving = read(want.user_features.path).query(f"framing == 'serving' and user_id == {single_user}")
    assert list(serving.t_days_since_prior) == [after]
