"""The graph's stored state: both framings' graphs from one table of purchases, kept from batch to
batch so a kept model's batch updates it with the new batches instead of re-reading the history.

What the graphs hold (graph.py) is additive per user: a (user, product) edge of the `serving`
framing counts the lines of every one of the user's orders (an order without lines adds nothing),
and the `target` framing's counts the same lines except the user's latest order's. So the state is

- edges: one row per (user_id, product_id) bought in any order: `times_bought` (every order, the
  serving weight) and `latest_times` (in the user's latest order); target weight = the difference;
- users: one row per user with an order: `last_order_id` (the latest by order_number) and, per
  framing, the history orders and mean days between them (as graph.USERS_SQL computes them).

The catalog is not part of it: each batch's graphs keep only the edges of current products.

A batch changes only the users it touches (an order, or a line of any of their orders: late lines
included): their rows are recomputed from their stored rows plus the new lines, with their orders
re-sequenced from the orders history (small beside the lines); every other row is kept as it is. A
user's latest order moves only to an order new in these batches, whose lines all arrive with or
after it, so its `latest_times` are exact. A forget rewrites the state files with every other lake
file (their `user_id` column), so a forgotten user is gone from the state as from a full build.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import create_view
from instarec_assets.lake.locations import PARTITION_DIR_PATTERN
from instarec_assets.ml.graphsage.graph import (
    FRAMINGS,
    PRODUCTS_SQL,
    BipartiteGraph,
    _filled,
    graph_from_pairs,
)

STATE_EDGES_FILE = "graph_state_edges.parquet"
STATE_USERS_FILE = "graph_state_users.parquet"
STATE_FILES = (STATE_EDGES_FILE, STATE_USERS_FILE)

EDGE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("product_id", pa.int64()),
        ("times_bought", pa.float32()),
        ("latest_times", pa.float32()),
    ]
)
USER_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("last_order_id", pa.int64()),
        ("target_orders", pa.float32()),
        ("target_days_between", pa.float32()),
        ("serving_orders", pa.float32()),
        ("serving_days_between", pa.float32()),
    ]
)

# The orders of the users in `gs_state_users_in` (every user when it holds NULL), numbered per user
# by order_number as graph.HISTORY_SQL numbers them.
SEQUENCED_SQL = """
CREATE OR REPLACE TEMP TABLE gs_sequenced AS
SELECT order_id, user_id, days_since_prior_order,
       row_number() OVER by_user AS seq,
       count(*) OVER (PARTITION BY user_id) AS last_seq
FROM gs_state_orders
WHERE {user_filter}
WINDOW by_user AS (PARTITION BY user_id ORDER BY order_number)
"""

# Lines of the sequenced orders, per (user, product): every order and the latest order.
LINE_COUNTS_SQL = """
SELECT s.user_id::BIGINT AS user_id, l.product_id::BIGINT AS product_id,
       count(*)::FLOAT AS times_bought,
       count(*) FILTER (WHERE s.seq = s.last_seq)::FLOAT AS latest_times
FROM {lines} AS l
JOIN gs_sequenced AS s USING (order_id)
GROUP BY ALL
"""

# The users' rows: the target framing's history is every order but the latest; the serving
# framing's adds the latest when it has lines (`gs_latest_lines`: users whose latest order has one).
USERS_STATE_SQL = """
SELECT s.user_id::BIGINT AS user_id,
       arg_max(s.order_id, s.seq)::BIGINT AS last_order_id,
       count(*) FILTER (WHERE s.seq < s.last_seq)::FLOAT AS target_orders,
       avg(s.days_since_prior_order) FILTER (WHERE s.seq > 1 AND s.seq < s.last_seq)::FLOAT
           AS target_days_between,
       count(*) FILTER (WHERE s.seq < s.last_seq OR h.user_id IS NOT NULL)::FLOAT AS serving_orders,
       avg(s.days_since_prior_order) FILTER (
           WHERE s.seq > 1 AND (s.seq < s.last_seq OR h.user_id IS NOT NULL))::FLOAT AS serving_days_between
FROM gs_sequenced AS s
LEFT JOIN gs_latest_lines AS h USING (user_id)
GROUP BY s.user_id
ORDER BY s.user_id
"""


@dataclass
class GraphState:
    """The state's two tables, sorted by user (and product); see the module docstring."""

    edges: pa.Table
    users: pa.Table

    def write(self, folder: Path) -> None:
        """Both tables into `folder` (zstd parquet; the same state gives the same bytes)."""
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.edges, folder / STATE_EDGES_FILE, compression="zstd")
        pq.write_table(self.users, folder / STATE_USERS_FILE, compression="zstd")

    @classmethod
    def read(cls, folder: str | Path) -> GraphState | None:
        """The state stored in a model folder; None when the folder has none (an older model)."""
        paths = [Path(folder) / name for name in STATE_FILES]
        if not all(path.exists() for path in paths):
            return None
        edges, users = (pq.read_table(path) for path in paths)
        if edges.schema != EDGE_SCHEMA or users.schema != USER_SCHEMA:
            return None
        return cls(edges, users)

    def graphs(
        self, conn: duckdb.DuckDBPyConnection, products_uri: str, framings: Sequence[str] = FRAMINGS
    ) -> dict[str, BipartiteGraph]:
        """The framings' graphs with the current catalog of `products_uri`: the same arrays as
        graph.build_graph on the clean zone the state was built from."""
        products = conn.execute(PRODUCTS_SQL, [products_uri]).fetchnumpy()
        user_id = _column(self.users, "user_id", np.int64)
        edge_user = _column(self.edges, "user_id", np.int64)
        edge_product = _column(self.edges, "product_id", np.int64)
        times = _column(self.edges, "times_bought", np.float32)
        latest = _column(self.edges, "latest_times", np.float32)
        graphs = {}
        for framing in framings:
            orders = _column(self.users, f"{framing}_orders", np.float32)
            days = _column(self.users, f"{framing}_days_between", np.float32)
            nodes = orders > 0
            if framing == "target":
                weight = times - latest
                keep = weight > 0
                pairs = (edge_user[keep], edge_product[keep], weight[keep])
            else:
                pairs = (edge_user, edge_product, times)
            graphs[framing] = graph_from_pairs(
                user_ids=pairs[0],
                product_ids=pairs[1],
                times_bought=pairs[2],
                users=user_id[nodes],
                user_orders=orders[nodes],
                user_days_between=days[nodes],
                products=_filled(products["product_id"], np.int64),
                aisle_ids=_filled(products["aisle_id"], np.int64, fill=-1),
                department_ids=_filled(products["department_id"], np.int64, fill=-1),
                framing=framing,
            )
        return graphs


@dataclass
class StateUpdate:
    """A state and how it was made: `mode` full or incremental, the users recomputed."""

    state: GraphState
    mode: str
    affected_users: np.ndarray  # int64, sorted: users whose rows were recomputed (every user when full)
    seconds: float


def _column(table: pa.Table, name: str, dtype) -> np.ndarray:
    column = table.column(name).to_numpy(zero_copy_only=False)
    if dtype == np.float32:
        return np.asarray(column, dtype=np.float32)
    return column.astype(dtype, copy=False)


def _state_rows(conn: duckdb.DuckDBPyConnection, lines: str, user_filter: str) -> tuple[pa.Table, pa.Table]:
    """(edges, users) of the users `user_filter` selects, from the orders view and `lines`."""
    conn.execute(SEQUENCED_SQL.format(user_filter=user_filter))
    try:
        edges = conn.sql(
            LINE_COUNTS_SQL.format(lines=lines) + " ORDER BY user_id, product_id"
        ).to_arrow_table()
        return edges, _users_rows(conn, edges)
    finally:
        conn.execute("DROP TABLE IF EXISTS gs_sequenced")


def _users_rows(conn: duckdb.DuckDBPyConnection, edges: pa.Table) -> pa.Table:
    latest = edges.filter(pc.greater(edges.column("latest_times"), 0)).select(["user_id"])
    conn.register("gs_latest_lines_rows", latest)
    try:
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE gs_latest_lines AS SELECT DISTINCT user_id FROM gs_latest_lines_rows"
        )
        return conn.sql(USERS_STATE_SQL).to_arrow_table().cast(USER_SCHEMA)
    finally:
        conn.unregister("gs_latest_lines_rows")
        conn.execute("DROP TABLE IF EXISTS gs_latest_lines")


def build_state(conn: duckdb.DuckDBPyConnection, snapshot: CleanSnapshot) -> StateUpdate:
    """The state of a whole clean snapshot (one pass over the history's lines)."""
    started = time.perf_counter()
    create_view(conn, "gs_state_orders", snapshot.orders, CLEAN_ORDERS_SCHEMA)
    create_view(conn, "gs_state_lines", snapshot.order_products, CLEAN_ORDER_PRODUCTS_SCHEMA)
    try:
        edges, users = _state_rows(conn, "gs_state_lines", "true")
    finally:
        for view in ("gs_state_orders", "gs_state_lines"):
            conn.execute(f"DROP VIEW IF EXISTS {view}")
    state = GraphState(edges.cast(EDGE_SCHEMA), users)
    return StateUpdate(state, "full", _column(users, "user_id", np.int64), time.perf_counter() - started)


# The users a batch touches: an order of theirs, or a line of one of their orders (any batch's).
AFFECTED_SQL = """
CREATE OR REPLACE TEMP TABLE gs_state_affected AS
SELECT DISTINCT user_id::BIGINT AS user_id FROM gs_delta_orders
UNION
SELECT DISTINCT user_id::BIGINT FROM gs_state_orders
WHERE order_id IN (SELECT order_id FROM gs_delta_lines)
"""

# The affected users' stored rows plus the new lines; a stored latest count stays only while the
# latest order is the same one.
MERGED_EDGES_SQL = """
SELECT user_id, product_id, sum(times_bought)::FLOAT AS times_bought, sum(latest_times)::FLOAT AS latest_times
FROM (
    SELECT e.user_id, e.product_id, e.times_bought,
           CASE WHEN before.last_order_id = now.last_order_id THEN e.latest_times ELSE 0 END AS latest_times
    FROM gs_previous_edges AS e
    JOIN gs_new_users AS now USING (user_id)
    LEFT JOIN gs_previous_users AS before USING (user_id)
    UNION ALL
    SELECT * FROM ({line_counts})
)
GROUP BY ALL
ORDER BY user_id, product_id
"""


def update_state(
    conn: duckdb.DuckDBPyConnection,
    previous: GraphState,
    orders_history: Sequence[str],
    delta_orders: Sequence[str],
    delta_lines: Sequence[str],
) -> StateUpdate:
    """The state after the batches whose clean orders and lines are `delta_orders`/`delta_lines`
    (every batch after the previous state's, up to this one); `orders_history` is every batch's
    clean orders up to this one. Equal to build_state on the new snapshot (tested)."""
    started = time.perf_counter()
    create_view(conn, "gs_state_orders", orders_history, CLEAN_ORDERS_SCHEMA)
    create_view(conn, "gs_delta_orders", delta_orders, CLEAN_ORDERS_SCHEMA)
    create_view(conn, "gs_delta_lines", delta_lines, CLEAN_ORDER_PRODUCTS_SCHEMA)
    try:
        conn.execute(AFFECTED_SQL)
        affected = conn.sql("SELECT user_id FROM gs_state_affected ORDER BY user_id").fetchnumpy()["user_id"]
        affected = np.asarray(affected, dtype=np.int64)
        # only the affected users' stored edges take part (the state is sorted by user: a few
        # slices), so the merge scans the batch's users, not the whole state
        stored_edge_rows = _rows_of(previous.edges, affected)
        conn.register("gs_previous_edges", previous.edges.filter(pa.array(stored_edge_rows)))
        conn.register("gs_previous_users", previous.users)
        try:
            conn.execute(
                SEQUENCED_SQL.format(user_filter="user_id IN (SELECT user_id FROM gs_state_affected)")
            )
            conn.execute(
                "CREATE OR REPLACE TEMP TABLE gs_new_users AS "
                "SELECT user_id::BIGINT AS user_id, arg_max(order_id, seq)::BIGINT AS last_order_id "
                "FROM gs_sequenced GROUP BY user_id"
            )
            line_counts = LINE_COUNTS_SQL.format(lines="gs_delta_lines")
            merged = MERGED_EDGES_SQL.format(line_counts=line_counts)
            edges = conn.sql(merged).to_arrow_table().cast(EDGE_SCHEMA)
            users = _users_rows(conn, edges)
        finally:
            conn.unregister("gs_previous_edges")
            conn.unregister("gs_previous_users")
    finally:
        for table in ("gs_sequenced", "gs_new_users", "gs_state_affected"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        for view in ("gs_state_orders", "gs_delta_orders", "gs_delta_lines"):
            conn.execute(f"DROP VIEW IF EXISTS {view}")
    state = GraphState(
        _replace_users(previous.edges, edges, affected, stored_edge_rows),
        _replace_users(previous.users, users, affected),
    )
    return StateUpdate(state, "incremental", affected, time.perf_counter() - started)


def _rows_of(table: pa.Table, users: np.ndarray) -> np.ndarray:
    """Bool mask of the rows of `table` (sorted by user_id) whose user is in `users` (sorted,
    unique): each user's rows are one slice, found by binary search, the mask written run by run."""
    stored_users = _column(table, "user_id", np.int64)
    bounds = np.empty(2 * users.size + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, stored_users.size
    bounds[1:-1:2] = np.searchsorted(stored_users, users, side="left")
    bounds[2:-1:2] = np.searchsorted(stored_users, users, side="right")
    inside = np.zeros(bounds.size - 1, dtype=bool)
    inside[1::2] = True  # runs alternate: before the first user, its rows, up to the next user, ...
    return np.repeat(inside, np.diff(bounds))


def _replace_users(
    stored: pa.Table, fresh: pa.Table, users: np.ndarray, drop: np.ndarray | None = None
) -> pa.Table:
    """`stored` without the rows of `users`, with `fresh` (their new rows, sorted) merged in, in
    (user_id, product_id) order: a linear merge of two sorted tables, not a sort of the whole state.
    `drop`: `_rows_of(stored, users)` when the caller has it."""
    fresh_users = _column(fresh, "user_id", np.int64)
    if fresh_users.size and not np.isin(np.unique(fresh_users), users).all():
        raise ValueError("fresh rows must belong to the replaced users")
    drop = _rows_of(stored, users) if drop is None else drop
    kept_rows = np.flatnonzero(~drop)
    # every stored row of a fresh row's user is dropped, so the user alone places the fresh rows
    at = np.searchsorted(_column(stored, "user_id", np.int64)[kept_rows], fresh_users)
    # row i of the result: kept rows shifted by the fresh rows inserted before them
    n = kept_rows.size + fresh.num_rows
    from_fresh = np.zeros(n, dtype=bool)
    from_fresh[at + np.arange(fresh.num_rows)] = True
    order = np.empty(n, dtype=np.int64)
    order[~from_fresh] = kept_rows
    order[from_fresh] = stored.num_rows + np.arange(fresh.num_rows)
    return _take_rows(stored, fresh.cast(stored.schema), order)


def _take_rows(first: pa.Table, second: pa.Table, order: np.ndarray) -> pa.Table:
    """Rows `order` of `first` followed by `second`, one chunk per column (a take on one
    concatenated array per column: Table.take over the chunked columns took ~1.8 s at full size)."""
    indices = pa.array(order)
    columns = [
        pa.concat_arrays([*first.column(name).chunks, *second.column(name).chunks]).take(indices)
        for name in first.column_names
    ]
    return pa.Table.from_arrays(columns, schema=first.schema)


def batch_of(uri: str) -> str:
    """The batch (YYYY-MM-DD) of a partition URI of the lake."""
    match = PARTITION_DIR_PATTERN.search(uri)
    if match is None:
        raise ValueError(f"{uri} is not a lake partition (no year=/month=/day= in its path)")
    return "-".join(match.groups())


def state_for_batch(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    previous: tuple[str, Path] | None,
    *,
    full: bool = False,
) -> tuple[StateUpdate, str]:
    """This batch's state and why it was built so: updated from the state stored in `previous`
    (batch, model folder) with every batch after it, or built from the whole snapshot when asked,
    when there is no earlier model folder, or when that folder stores no state."""
    if full:
        return build_state(conn, snapshot), "full: full_graph requested by the run config"
    if previous is None:
        return build_state(conn, snapshot), "full: no earlier GraphSAGE model folder"
    stored_batch, folder = previous
    stored = GraphState.read(folder)
    if stored is None:
        return build_state(conn, snapshot), f"full: the model folder of batch {stored_batch} stores no graph"
    delta_orders = [uri for uri in snapshot.orders if batch_of(uri) > stored_batch]
    delta_lines = [uri for uri in snapshot.order_products if batch_of(uri) > stored_batch]
    batches = sorted({batch_of(uri) for uri in [*delta_orders, *delta_lines]})
    update = update_state(conn, stored, snapshot.orders, delta_orders, delta_lines)
    return update, (
        f"incremental: the graph stored in batch {stored_batch} plus batch(es) {', '.join(batches) or 'none'} "
        f"({update.affected_users.size:,} users recomputed)"
    )
