"""The bipartite user-product graph: node index maps, weighted edges and raw node features.

One edge per distinct (user, product) bought in the user's history, weighted by the times it was
bought. "History" is the feature sets' framing (instarec_assets.features.targets): `target` = every
order before the user's latest one (the clean *prior* lines: what the model may know when the
training set's labels are drawn), `serving` = every order with known lines (the history of the next,
unknown order). Nodes: every user with a history order, every product of the current catalog (so
products nobody bought yet are nodes with features and no edges).

Raw node features are derived from the edges and two per-user order statistics, so a graph built
from the lake and a synthetic one (tests, the benchmark) are encoded the same way:

- user: log1p(history orders), log1p(items), items per order, share of items that are repeats,
  log1p(distinct products), mean days between orders (NaN for a single order);
- product: log1p(purchases), log1p(buyers), share of purchases that are repeats (NaN when never
  bought), plus aisle and department (one-hot in the model).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import duckdb
import numpy as np
import torch

from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import create_view
from instarec_assets.ml.graphsage.config import FeatureEncoding

FRAMINGS = ("target", "serving")
USER_FEATURE_NAMES = (
    "log_orders",
    "log_items",
    "items_per_order",
    "repeat_share",
    "log_distinct_products",
    "days_between_mean",
)
PRODUCT_FEATURE_NAMES = ("log_purchases", "log_buyers", "repeat_share")
# The raw features of a product nobody bought yet.
NEW_PRODUCT_RAW = np.array([0.0, 0.0, np.nan], dtype=np.float32)


@dataclass
class BipartiteGraph:
    """Users and products as dense indices 0..U-1 and 0..P-1 (sorted external ids), one edge per pair;
    edges built by `graph_from_pairs` are sorted by (user, product), so the same purchases give the
    same arrays whatever order they were read in."""

    user_ids: np.ndarray  # int64 (U,), sorted
    product_ids: np.ndarray  # int64 (P,), sorted
    edge_user: np.ndarray  # int64 (E,), index into user_ids
    edge_product: np.ndarray  # int64 (E,), index into product_ids
    edge_weight: np.ndarray  # float32 (E,), times bought
    user_orders: np.ndarray  # float32 (U,), history orders
    user_days_between: np.ndarray  # float32 (U,), mean days between history orders (NaN: one order)
    product_aisle_ids: np.ndarray  # int64 (P,), external aisle ids
    product_department_ids: np.ndarray  # int64 (P,)
    framing: str = "target"

    def __post_init__(self) -> None:
        n_edges = self.edge_user.shape[0]
        if self.edge_product.shape[0] != n_edges or self.edge_weight.shape[0] != n_edges:
            raise ValueError("edge_user, edge_product and edge_weight must have the same length")
        if self.user_orders.shape[0] != self.n_users or self.user_days_between.shape[0] != self.n_users:
            raise ValueError("one user_orders and user_days_between value per user")
        if self.product_aisle_ids.shape[0] != self.n_products:
            raise ValueError("one aisle and department per product")
        if n_edges and (
            self.edge_user.min() < 0
            or self.edge_user.max() >= self.n_users
            or self.edge_product.min() < 0
            or self.edge_product.max() >= self.n_products
        ):
            raise ValueError("edge indices out of range")

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_products(self) -> int:
        return int(self.product_ids.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_user.shape[0])

    @cached_property
    def user_degree(self) -> np.ndarray:
        return np.bincount(self.edge_user, minlength=self.n_users).astype(np.int64)

    @cached_property
    def product_degree(self) -> np.ndarray:
        return np.bincount(self.edge_product, minlength=self.n_products).astype(np.int64)

    def edge_frequency(self) -> np.ndarray:
        """Purchase frequency of each edge: times bought / the user's history orders, in (0, 1]."""
        orders = np.maximum(self.user_orders[self.edge_user], 1.0)
        return np.minimum(self.edge_weight / orders, 1.0).astype(np.float32)

    def user_raw_features(self) -> np.ndarray:
        items = np.bincount(self.edge_user, weights=self.edge_weight, minlength=self.n_users)
        distinct = self.user_degree.astype(np.float64)
        orders = self.user_orders.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_order = np.where(orders > 0, items / np.maximum(orders, 1), 0.0)
            repeat = np.where(items > 0, 1.0 - distinct / np.maximum(items, 1), np.nan)
        return np.column_stack(
            [np.log1p(orders), np.log1p(items), per_order, repeat, np.log1p(distinct), self.user_days_between]
        ).astype(np.float32)

    def product_raw_features(self) -> np.ndarray:
        purchases = np.bincount(self.edge_product, weights=self.edge_weight, minlength=self.n_products)
        buyers = self.product_degree.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            repeat = np.where(purchases > 0, 1.0 - buyers / np.maximum(purchases, 1), np.nan)
        return np.column_stack([np.log1p(purchases), np.log1p(buyers), repeat]).astype(np.float32)

    def fit_encoding(self) -> FeatureEncoding:
        """The encoding fitted on this graph (the training graph); reuse it for every later graph."""
        return FeatureEncoding.fit(
            self.product_aisle_ids,
            self.product_department_ids,
            self.user_raw_features(),
            USER_FEATURE_NAMES,
            self.product_raw_features(),
            PRODUCT_FEATURE_NAMES,
        )

    def node_features(self, encoding: FeatureEncoding) -> NodeFeatures:
        return NodeFeatures(
            user_x=torch.from_numpy(encoding.scale_users(self.user_raw_features())),
            product_x=torch.from_numpy(encoding.scale_products(self.product_raw_features())),
            new_product_x=torch.from_numpy(encoding.scale_products(NEW_PRODUCT_RAW[None, :])[0]),
            product_aisle=torch.from_numpy(encoding.aisle_index(self.product_aisle_ids)),
            product_department=torch.from_numpy(encoding.department_index(self.product_department_ids)),
        )

    def fingerprint(self) -> str:
        """sha256 over the framing and every array of the graph (ids, edges, weights, node data), in
        their order: the training data of a GraphSAGE model, recorded in its config."""
        digest = hashlib.sha256(self.framing.encode())
        for values, dtype in (
            (self.user_ids, np.int64),
            (self.product_ids, np.int64),
            (self.edge_user, np.int64),
            (self.edge_product, np.int64),
            (self.edge_weight, np.float32),
            (self.user_orders, np.float32),
            (self.user_days_between, np.float32),
            (self.product_aisle_ids, np.int64),
            (self.product_department_ids, np.int64),
        ):
            array = np.ascontiguousarray(values, dtype=dtype)
            digest.update(str(array.shape).encode())
            digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()

    def edge_keys(self) -> np.ndarray:
        """user * P + product for every edge, a unique int64 key per pair."""
        return self.edge_user.astype(np.int64) * self.n_products + self.edge_product

    def subgraph_edges(self, keep: np.ndarray) -> BipartiteGraph:
        """The same nodes with only the edges where `keep` (a bool mask or index array) selects."""
        return BipartiteGraph(
            user_ids=self.user_ids,
            product_ids=self.product_ids,
            edge_user=self.edge_user[keep],
            edge_product=self.edge_product[keep],
            edge_weight=self.edge_weight[keep],
            user_orders=self.user_orders,
            user_days_between=self.user_days_between,
            product_aisle_ids=self.product_aisle_ids,
            product_department_ids=self.product_department_ids,
            framing=self.framing,
        )

    def describe(self) -> dict[str, int | str]:
        return {
            "framing": self.framing,
            "users": self.n_users,
            "products": self.n_products,
            "edges": self.n_edges,
            "purchases": int(self.edge_weight.sum()),
            "users_without_edges": int((self.user_degree == 0).sum()),
            "products_without_edges": int((self.product_degree == 0).sum()),
        }


@dataclass
class NodeFeatures:
    """Encoded model inputs: scaled numeric features, aisle and department as one-hot indices."""

    user_x: torch.Tensor  # float32 (U, F_u)
    product_x: torch.Tensor  # float32 (P, F_p)
    new_product_x: torch.Tensor  # float32 (F_p,): the scaled features of a never-bought product
    product_aisle: torch.Tensor  # int64 (P,)
    product_department: torch.Tensor  # int64 (P,)

    def to(self, device: torch.device | str) -> NodeFeatures:
        return NodeFeatures(
            self.user_x.to(device),
            self.product_x.to(device),
            self.new_product_x.to(device),
            self.product_aisle.to(device),
            self.product_department.to(device),
        )


def graph_from_pairs(
    user_ids: np.ndarray,
    product_ids: np.ndarray,
    times_bought: np.ndarray,
    users: np.ndarray,
    user_orders: np.ndarray,
    user_days_between: np.ndarray,
    products: np.ndarray,
    aisle_ids: np.ndarray,
    department_ids: np.ndarray,
    framing: str = "target",
) -> BipartiteGraph:
    """A graph from external ids: pairs (user_id, product_id, times bought) and the node tables.

    Pairs whose user or product is not a node are dropped (the caller counts them if it cares).
    Nodes are sorted by id and edges by (user, product) (stably, unless they already are), so the
    graph does not depend on the order the pairs and nodes come in.
    """
    user_order = np.argsort(users, kind="stable")
    product_order = np.argsort(products, kind="stable")
    sorted_users = np.asarray(users, dtype=np.int64)[user_order]
    sorted_products = np.asarray(products, dtype=np.int64)[product_order]
    edge_user = _index_of(sorted_users, user_ids)
    edge_product = _index_of(sorted_products, product_ids)
    keep = (edge_user >= 0) & (edge_product >= 0)
    if not keep.all():
        edge_user, edge_product, times_bought = edge_user[keep], edge_product[keep], times_bought[keep]
    keys = edge_user * max(1, sorted_products.size) + edge_product
    if keys.size > 1 and bool((keys[1:] < keys[:-1]).any()):
        order = np.argsort(keys, kind="stable")
        edge_user, edge_product = edge_user[order], edge_product[order]
        times_bought = np.asarray(times_bought)[order]
    return BipartiteGraph(
        user_ids=sorted_users,
        product_ids=sorted_products,
        edge_user=edge_user,
        edge_product=edge_product,
        edge_weight=np.asarray(times_bought, dtype=np.float32),
        user_orders=np.asarray(user_orders, dtype=np.float32)[user_order],
        user_days_between=np.asarray(user_days_between, dtype=np.float32)[user_order],
        product_aisle_ids=np.asarray(aisle_ids, dtype=np.int64)[product_order],
        product_department_ids=np.asarray(department_ids, dtype=np.int64)[product_order],
        framing=framing,
    )


def _index_of(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The position of each value in `sorted_ids` (its first, if repeated), -1 where absent."""
    values = np.asarray(values, dtype=np.int64)
    if sorted_ids.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    low, high = int(sorted_ids[0]), int(sorted_ids[-1])
    if high - low < max(values.size, 1 << 16):
        # a dense id -> position table: one gather per value instead of a binary search (~10x faster
        # for the graph's ~14M edges; node ids are dense enough that the table stays small)
        first = np.ones(sorted_ids.size, dtype=bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        table = np.full(high - low + 1, -1, dtype=np.int64)
        table[sorted_ids[first] - low] = np.flatnonzero(first)
        index = values - low
        outside = index.view(np.uint64) > high - low  # below `low` wraps around to a large value
        index[outside] = 0
        position = table[index]
        position[outside] = -1
        return position
    position = np.clip(np.searchsorted(sorted_ids, values), 0, sorted_ids.size - 1)
    return np.where(sorted_ids[position] == values, position, -1).astype(np.int64)


# Orders numbered per user like the feature sets (seq 1..n by order_number); an order's lines are
# known when it has at least one clean line. `target` history: seq < last_seq; `serving` history:
# every order except a latest one whose lines are unknown.
HISTORY_SQL = """
CREATE OR REPLACE TEMP TABLE gs_history AS
WITH sizes AS (
    SELECT order_id, count(*) AS n_lines FROM gs_clean_lines GROUP BY order_id
),
sequenced AS (
    SELECT o.order_id, o.user_id, o.days_since_prior_order,
           row_number() OVER by_user AS seq,
           count(*) OVER (PARTITION BY o.user_id) AS last_seq,
           coalesce(s.n_lines, 0) AS n_lines
    FROM gs_clean_orders AS o
    LEFT JOIN sizes AS s USING (order_id)
    WINDOW by_user AS (PARTITION BY o.user_id ORDER BY o.order_number)
)
SELECT order_id, user_id, days_since_prior_order, seq
FROM sequenced
WHERE seq < last_seq OR ($framing = 'serving' AND n_lines > 0)
"""

# Every query's order is explicit (DuckDB's multi-threaded aggregation returns groups in any order);
# graph_from_pairs sorts again, so a graph never depends on it. A product has one current row; should
# it have two, the aggregate keeps one chosen by value, not by scan order. days_between averages
# whole days (TINYINT, summed exactly), so partial aggregates combine to the same value in any order.
USERS_SQL = """
SELECT user_id::BIGINT AS user_id, count(*)::FLOAT AS orders,
       avg(days_since_prior_order) FILTER (WHERE seq > 1)::FLOAT AS days_between
FROM gs_history
GROUP BY user_id
ORDER BY user_id
"""

EDGES_SQL = """
SELECT h.user_id::BIGINT AS user_id, l.product_id::BIGINT AS product_id, count(*)::FLOAT AS times_bought
FROM gs_clean_lines AS l
JOIN gs_history AS h USING (order_id)
GROUP BY h.user_id, l.product_id
ORDER BY user_id, product_id
"""

PRODUCTS_SQL = """
SELECT product_id::BIGINT AS product_id,
       first(aisle_id ORDER BY aisle_id, department_id)::BIGINT AS aisle_id,
       first(department_id ORDER BY aisle_id, department_id)::BIGINT AS department_id
FROM read_parquet(?, hive_partitioning = false)
WHERE is_current
GROUP BY product_id
ORDER BY product_id
"""


def build_graph(
    conn: duckdb.DuckDBPyConnection, snapshot: CleanSnapshot, framing: str = "target"
) -> BipartiteGraph:
    """The user-product graph of one framing of a clean snapshot (see the module docstring)."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, not {framing!r}")
    create_view(conn, "gs_clean_orders", snapshot.orders, CLEAN_ORDERS_SCHEMA)
    create_view(conn, "gs_clean_lines", snapshot.order_products, CLEAN_ORDER_PRODUCTS_SCHEMA)
    try:
        conn.execute(HISTORY_SQL, {"framing": framing})
        users = conn.sql(USERS_SQL).fetchnumpy()
        products = conn.execute(PRODUCTS_SQL, [snapshot.products]).fetchnumpy()
        edges = conn.sql(EDGES_SQL).to_arrow_table()
    finally:
        conn.execute("DROP TABLE IF EXISTS gs_history")
        for view in ("gs_clean_orders", "gs_clean_lines"):
            conn.execute(f"DROP VIEW IF EXISTS {view}")

    def column(table, name: str, dtype) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False).astype(dtype, copy=False)

    return graph_from_pairs(
        user_ids=column(edges, "user_id", np.int64),
        product_ids=column(edges, "product_id", np.int64),
        times_bought=column(edges, "times_bought", np.float32),
        users=_filled(users["user_id"], np.int64),
        user_orders=_filled(users["orders"], np.float32),
        user_days_between=_filled(users["days_between"], np.float32, fill=np.nan),
        products=_filled(products["product_id"], np.int64),
        aisle_ids=_filled(products["aisle_id"], np.int64, fill=-1),
        department_ids=_filled(products["department_id"], np.int64, fill=-1),
        framing=framing,
    )


def _filled(values, dtype, fill=0) -> np.ndarray:
    """A fetchnumpy column (possibly masked where NULL) as a plain array."""
    if isinstance(values, np.ma.MaskedArray):
        values = values.astype(np.float64 if np.isnan(fill) else dtype).filled(fill)
    return np.asarray(values).astype(dtype, copy=False)
