"""The GraphSAGE graph updated from the previous batch's stored state equals a full build, batch after
batch: new orders, late lines, a latest order without lines, catalog changes and a forgotten user."""

from __future__ import annotations

import itertools
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch

from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.locations import LakeLocations, partition_relpath
from instarec_assets.ml.graphsage import FRAMINGS, GraphSageModel, GraphSageParams, build_graph, embed_graph
from instarec_assets.ml.graphsage.graph_state import (
    GraphState,
    _replace_users,
    _rows_of,
    build_state,
    state_for_batch,
    update_state,
)
from instarec_assets.privacy.forget import forget_user

BATCHES = ("2024-01-01", "2024-01-08", "2024-01-15")
# (order_id, user_id, eval_set, order_number, days_since_prior_order) per batch
ORDERS = {
    "2024-01-01": [
        (10, 1, "prior", 1, None),
        (11, 1, "prior", 2, 7),
        (12, 1, "train", 3, 5),
        (20, 2, "prior", 1, None),
        (21, 2, "prior", 2, 9),
        (30, 3, "test", 1, None),
        (40, 4, "prior", 1, None),
        (41, 4, "prior", 2, 3),
    ],
    # user 1 orders again (order 12 becomes history); user 5 is new; user 3 gets a second order
    "2024-01-08": [(13, 1, "prior", 4, 6), (50, 5, "prior", 1, None), (31, 3, "test", 2, 4)],
    # user 2's new latest order has no lines (yet); user 4 orders again (then is forgotten)
    "2024-01-15": [(22, 2, "test", 3, 12), (42, 4, "prior", 3, 8)],
}
# (order_id, product_id) per batch (add_to_cart_order and reordered do not matter to the graph)
LINES = {
    "2024-01-01": [
        (10, 100),
        (10, 200),
        (11, 100),
        (12, 100),
        (12, 300),
        (20, 200),
        (21, 200),
        (21, 100),
        (40, 300),
        (41, 300),
    ],
    # late lines: order 30 (user 3's first, `test` when landed) gets its contents
    "2024-01-08": [(13, 100), (13, 200), (50, 400), (30, 200), (30, 100)],
    # late lines for user 1's order 11 (history, not the latest) and user 5's only order
    "2024-01-15": [(11, 300), (50, 100), (42, 100), (31, 300)],
}
# (product_id, aisle_id, department_id, is_current) per batch: 300 moves aisle, 400 leaves, 500 comes
PRODUCTS = {
    "2024-01-01": [(100, 5, 1, True), (200, 6, 2, True), (300, 7, 2, True), (400, 5, 1, True)],
    "2024-01-08": [(100, 5, 1, True), (200, 6, 2, True), (300, 8, 2, True), (400, 5, 1, True)],
    "2024-01-15": [
        (100, 5, 1, True),
        (200, 6, 2, True),
        (300, 8, 2, True),
        (400, 5, 1, False),
        (500, 5, 1, True),
    ],
}


def _write(conn: duckdb.DuckDBPyConnection, path: Path, rows: list[tuple], columns: str, types: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = ", ".join("(" + ", ".join("NULL" if v is None else repr(v) for v in row) + ")" for row in rows)
    conn.execute(f"COPY (SELECT {types} FROM (VALUES {values}) AS t({columns})) TO '{path}' (FORMAT parquet)")
    return str(path)


@pytest.fixture
def lake(tmp_path: Path) -> tuple[LakeLocations, duckdb.DuckDBPyConnection]:
    """Three batches of clean orders, lines and catalog in the lake's layout under tmp_path."""
    conn = duckdb.connect()
    locations = LakeLocations(home=str(tmp_path))
    clean = Path(locations.zone_uri("clean"))
    for batch in BATCHES:
        _write(
            conn,
            clean / partition_relpath("clean_orders", batch),
            ORDERS[batch],
            "order_id, user_id, eval_set, order_number, days_since_prior_order",
            "order_id::INTEGER AS order_id, user_id::INTEGER AS user_id, eval_set, "
            "order_number::SMALLINT AS order_number, days_since_prior_order::TINYINT AS days_since_prior_order",
        )
        _write(
            conn,
            clean / partition_relpath("clean_order_products", batch),
            [(order, product, 1, 0) for order, product in LINES[batch]],
            "order_id, product_id, add_to_cart_order, reordered",
            "order_id::INTEGER AS order_id, product_id::INTEGER AS product_id, "
            "add_to_cart_order::SMALLINT AS add_to_cart_order, reordered::TINYINT AS reordered",
        )
        _write(
            conn,
            clean / partition_relpath("clean_products", batch),
            PRODUCTS[batch],
            "product_id, aisle_id, department_id, is_current",
            "product_id::INTEGER AS product_id, aisle_id::INTEGER AS aisle_id, "
            "department_id::INTEGER AS department_id, is_current",
        )
    return locations, conn


def _snapshot(locations: LakeLocations, batch: str) -> CleanSnapshot:
    def uris(table: str) -> list[str]:
        return [uri for key, uri in locations.partitions("clean", table).items() if key <= batch]

    return CleanSnapshot(
        orders=uris("clean_orders"),
        order_products=uris("clean_order_products"),
        products=locations.partitions("clean", "clean_products")[batch],
        aisles="",
        departments="",
    )


def _assert_same_graph(left, right) -> None:
    for name in (
        "user_ids",
        "product_ids",
        "edge_user",
        "edge_product",
        "edge_weight",
        "user_orders",
        "user_days_between",
        "product_aisle_ids",
        "product_department_ids",
    ):
        a, b = getattr(left, name), getattr(right, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
    assert left.fingerprint() == right.fingerprint()


def _edges(graph) -> dict[tuple[int, int], float]:
    return {
        (int(graph.user_ids[u]), int(graph.product_ids[p])): float(w)
        for u, p, w in zip(graph.edge_user, graph.edge_product, graph.edge_weight, strict=True)
    }


def _model(graph):
    encoding = graph.fit_encoding()
    torch.manual_seed(0)
    return GraphSageModel(GraphSageModel.architecture_for(GraphSageParams(), encoding)).eval(), encoding


def test_state_from_the_previous_batch_equals_a_full_build_batch_after_batch(lake, tmp_path):
    locations, conn = lake
    first = _snapshot(locations, BATCHES[0])
    state = build_state(conn, first).state
    for framing in FRAMINGS:
        _assert_same_graph(state.graphs(conn, first.products)[framing], build_graph(conn, first, framing))
    model, encoding = _model(build_graph(conn, first, "target"))
    for previous_batch, batch in itertools.pairwise(BATCHES):
        folder = tmp_path / "models" / previous_batch
        state.write(folder)  # through the files, as the model folder stores it
        stored = GraphState.read(folder)
        snapshot = _snapshot(locations, batch)
        update, reason = state_for_batch(conn, snapshot, (previous_batch, folder))
        assert update.mode == "incremental" and f"batch {previous_batch} plus batch(es) {batch}" in reason
        full = build_state(conn, snapshot).state
        assert update.state.edges.equals(full.edges) and update.state.users.equals(full.users)
        incremental_graphs = update.state.graphs(conn, snapshot.products)
        for framing in FRAMINGS:
            built = build_graph(conn, snapshot, framing)
            _assert_same_graph(incremental_graphs[framing], built)
            # the same graph, so the same embeddings as the full path's, byte for byte
            a = embed_graph(model, incremental_graphs[framing], encoding, threads=1)
            b = embed_graph(model, built, encoding, threads=1)
            assert a.users.tobytes() == b.users.tobytes() and a.products.tobytes() == b.products.tobytes()
        assert stored is not None
        state = update.state
    # spot values: user 1's late line for order 11 counts in both framings; order 13 is the latest
    last = state.graphs(conn, _snapshot(locations, BATCHES[-1]).products)
    assert _edges(last["target"])[(1, 300)] == 2.0 and _edges(last["serving"])[(1, 300)] == 2.0
    # user 2's latest order 22 has no lines: order 21 is history in both framings, 22 counts nowhere
    assert _edges(last["target"])[(2, 200)] == 2.0 and _edges(last["serving"])[(2, 200)] == 2.0
    # product 400 left the catalog: user 5's edge to it is gone, 500 is a node without edges
    assert (5, 400) not in _edges(last["serving"]) and 500 in last["serving"].product_ids.tolist()


def test_only_the_users_a_batch_touches_are_recomputed(lake):
    locations, conn = lake
    state = build_state(conn, _snapshot(locations, BATCHES[0])).state
    snapshot = _snapshot(locations, BATCHES[1])
    update = update_state(conn, state, snapshot.orders, snapshot.orders[1:], snapshot.order_products[1:])
    # users 1, 3, 5 ordered; user 3's late lines are for order 30; users 2 and 4 untouched
    assert update.affected_users.tolist() == [1, 3, 5]


def test_a_forgotten_user_leaves_the_stored_state_as_the_lake(lake):
    """The forget rewrites the state files in the model folder with every other lake file, so the
    next batch's update equals a full build without the user."""
    locations, conn = lake
    folder = Path(locations.models_uri()) / "graphsage_model" / "year=2024" / "month=01" / "day=08"
    build_state(conn, _snapshot(locations, BATCHES[1])).state.write(folder)
    outcome = forget_user(locations, 4, salt="s" * 32, requested_by="test", reason="erasure")
    assert any("graph_state_edges" in rewrite.target for rewrite in outcome.record.rewritten)
    stored = GraphState.read(folder)
    assert 4 not in stored.users.column("user_id").to_pylist()
    snapshot = _snapshot(locations, BATCHES[2])
    update, _ = state_for_batch(conn, snapshot, (BATCHES[1], folder))
    full = build_state(conn, snapshot).state
    assert update.state.edges.equals(full.edges) and update.state.users.equals(full.users)
    assert 4 not in update.state.users.column("user_id").to_pylist()


def test_a_model_folder_without_a_stored_graph_gives_a_full_build(lake, tmp_path):
    locations, conn = lake
    snapshot = _snapshot(locations, BATCHES[1])
    update, reason = state_for_batch(conn, snapshot, (BATCHES[0], tmp_path / "empty"))
    assert update.mode == "full" and reason == f"full: the model folder of batch {BATCHES[0]} stores no graph"
    assert state_for_batch(conn, snapshot, None)[1] == "full: no earlier GraphSAGE model folder"
    assert state_for_batch(conn, snapshot, (BATCHES[0], tmp_path), full=True)[0].mode == "full"


def test_replacing_users_rows_merges_in_key_order_and_keeps_nulls():
    stored = pa.table(
        {
            "user_id": pa.array([1, 1, 2, 4, 4, 7], pa.int64()),
            "product_id": pa.array([5, 9, 1, 2, 3, 1], pa.int64()),
            "days": pa.array([1.0, None, 2.0, 3.0, None, 4.0], pa.float32()),
        }
    )
    fresh = pa.table(
        {
            "user_id": pa.array([0, 4, 5, 5], pa.int64()),
            "product_id": pa.array([8, 1, 2, 6], pa.int64()),
            "days": pa.array([None, 6.0, 7.0, 8.0], pa.float32()),
        }
    )
    users = np.array([0, 2, 4, 5], dtype=np.int64)  # user 2 lost its rows
    merged = _replace_users(stored, fresh, users)
    expected = pa.concat_tables([stored.filter(pa.array([1, 1, 0, 0, 0, 1]).cast(pa.bool_())), fresh])
    assert merged.equals(expected.sort_by([("user_id", "ascending"), ("product_id", "ascending")]))
    with pytest.raises(ValueError, match="replaced users"):
        _replace_users(stored, fresh, np.array([0, 4], dtype=np.int64))


def test_rows_of_users_marks_exactly_their_rows():
    rng = np.random.default_rng(1)
    for _ in range(200):
        stored = np.sort(rng.integers(0, 30, rng.integers(0, 60)))
        users = np.unique(rng.integers(-2, 33, rng.integers(0, 10)))
        marked = _rows_of(pa.table({"user_id": pa.array(stored, pa.int64())}), users)
        np.testing.assert_array_equal(marked, np.isin(stored, users))
