"""update_features: the feature tables of batch N from those of batch N-1, recomputing only what changed.

A full `build_features` aggregates every line of the history. Here only the *affected users* are rebuilt
from their whole history (the same SQL over the snapshot restricted to them), and only the *touched
products* are re-aggregated; every other row is carried over from the previous tables. The result equals
a full build at batch N row for row (instarec_assets_tests/test_features_incremental.py checks it).

Affected users (user and user x product rows recomputed):
- batch users: an order in the batch, or a line in the batch (late lines of an earlier `test` order);
- buyers of a moved product: ua_item_share / ud_item_share use the product's *current* aisle and
  department, so moving one product changes the rows of every user who ever bought it;
- single-order serving users when the global fallback gap changed: their serving t_days_since_prior is
  the mean days_since_prior_order over every order of every user (targets.SERVING_TARGETS_SQL), which
  every batch moves; when its rounded value changes, each of them (and their up_days_since_last) changes.

Touched products (product rows updated):
- products whose per-user contribution (n, first/last seq, cart and reordered sums) changed for an
  affected user: the batch's lines, but also e.g. the previous train target's lines, which become
  history when the user orders again although they are not in the batch;
- products whose current aisle or department differs from the previous p_aisle_id / p_department_id;
- with `previous.products`: every product whose current catalog row changed (renames, new products).

Every product feature is a ratio of sums over buyers (purchases, buyers, rebuyers, reordered, cart
sum, orders spanned; repeat purchases = purchases - buyers), so a touched product's sums are its
previous row's, recovered from the stored ratios, less the affected users' old contributions plus
their new ones (`additive`): the other buyers' rows are never read. The previous user x product
rows give n, first and last seq as integers; cart_sum and reordered_sum are recovered as
round(mean * n) from the FLOAT means, and the product sums likewise from the product ratios, exact
while a sum stays below 2^23 (a float's 24-bit significand: the error of float(s / n) * n is below
s * 2^-24). Where a previous sum is that large, the touched products are re-aggregated over every
buyer's recovered contribution instead (`re-aggregated`; ValueError if a user's sum is too large).

Output, two ways (`delta`):
- whole tables (a base: the first increment after a full build when deltas are off, or a compaction):
  the sets are the full build's join (sets.py) over the merged level tables, with the target lines of
  unaffected users taken from the previous training_set's labels; no aggregate, but it reads and
  writes every row, and those rewrites, not the aggregates, were most of an increment's cost;
- deltas (lake/feature_delta.py): only the affected users' rows (touched products' for
  product_features) and their keys as tombstones; the sets' rows of the affected users only, without
  the product columns, which the resolver joins from product_features. The previous tables are read
  through the same resolver, so batch N+1 updates batch N's chain.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from instarec_assets.features.build import FeatureTables
from instarec_assets.features.columns import PRODUCT_FEATURES, USER_FEATURES
from instarec_assets.features.product import PRODUCT_ROW_SELECT, build_products
from instarec_assets.features.sets import inference_select, training_select
from instarec_assets.features.snapshot import CleanSnapshot, open_snapshot
from instarec_assets.features.targets import build_roles, fill_serving_targets
from instarec_assets.features.user import USER_FEATURES_SELECT, build_users
from instarec_assets.features.user_product import (
    PURCHASES_SCHEMA_SQL,
    USER_PRODUCT_SELECT,
    build_affinity,
    build_purchases,
)
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import StagedParquet, copy_to_parquet, create_view, scalar
from instarec_assets.lake.feature_delta import DeltaInfo, chain_after, delta_info, feature_source, write_delta
from instarec_assets.lake.staging import StagedLocation

# A float's significand holds integers up to 2^24 exactly; below 2^23 round(float(s / n) * n) == s.
MAX_RECOVERED_SUM = 1 << 23


@dataclass(frozen=True)
class PreviousFeatures:
    """URIs of the previous batch's staged feature tables (and, optionally, its clean products file)."""

    user_features: str
    product_features: str
    user_product_features: str
    training_set: str
    inference_set: str
    products: str | None = None

    @property
    def read_by_update(self) -> tuple[str, ...]:
        """The tables update_features reads (the inference set it does not)."""
        return (self.user_features, self.product_features, self.user_product_features, self.training_set)

    @classmethod
    def from_tables(cls, tables: FeatureTables, products: str | None = None) -> PreviousFeatures:
        return cls(
            user_features=str(tables.user_features.path),
            product_features=str(tables.product_features.path),
            user_product_features=str(tables.user_product_features.path),
            training_set=str(tables.training_set.path),
            inference_set=str(tables.inference_set.path),
            products=products,
        )


@dataclass(frozen=True)
class DeltaChain:
    """Where this batch's deltas go: the batch and the earlier files of the chain (base first)."""

    batch: str
    chain: tuple[str, ...]


# How a batch's touched products were updated (IncrementalResult.product_update).
ADDITIVE = "additive"
REAGGREGATED = "re-aggregated"


@dataclass(frozen=True)
class IncrementalResult:
    """The new feature tables and what the batch changed.

    affected_user_ids: staged parquet (user_id, reason; sorted) of every user whose rows were
    recomputed: the only users whose user / user x product rows can differ from the previous tables (set rows of other
    users differ only in the product columns of touched products). touched_product_ids likewise.
    """

    tables: FeatureTables
    affected_user_ids: StagedParquet
    touched_product_ids: StagedParquet
    batch_users: int
    moved_product_buyers: int
    fallback_gap_users: int
    affected_users: int
    touched_products: int
    moved_products: int
    catalog_changed_products: int
    product_update: str
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What the curated step shows of an update (and the Spark job reports as JSON)."""
        return {
            "affected_users": self.affected_users,
            "touched_products": self.touched_products,
            "product_update": self.product_update,
            "seconds": self.seconds,
        }


TEMP_TABLES = (
    "inc_batch_users",
    "inc_moved",
    "inc_catalog_changed",
    "inc_users",
    "inc_user_rows",
    "inc_up_rows",
    "inc_target_lines",
    "inc_up_affected",
    "inc_up_old",
    "inc_product_old_sums",
    "inc_products",
    "inc_product_merged",
    "inc_product_rows",
    "feat_up",
    "feat_user_aisle",
    "feat_user_department",
    "feat_product",
    "feat_user",
    "feat_target_lines",
    "feat_history",
    "feat_frames",
    "feat_orders",
    "feat_catalog",
    "feat_clean_orders",
    "feat_clean_lines",
)
VIEWS = (
    "inc_all_orders",
    "inc_all_lines",
    "inc_batch_orders",
    "inc_batch_lines",
    "inc_prev_user",
    "inc_prev_product",
    "inc_prev_up",
    "inc_prev_training",
)

BATCH_USERS_SQL = """
CREATE OR REPLACE TEMP TABLE inc_batch_users AS
SELECT user_id FROM inc_batch_orders
UNION
SELECT o.user_id FROM inc_batch_lines AS l JOIN inc_all_orders AS o USING (order_id)
"""

# Products whose current aisle / department is not the one the previous product rows carry.
MOVED_SQL = """
CREATE OR REPLACE TEMP TABLE inc_moved AS
SELECT DISTINCT p.product_id
FROM inc_prev_product AS p
LEFT JOIN feat_catalog AS c USING (product_id)
WHERE p.p_aisle_id IS DISTINCT FROM c.aisle_id OR p.p_department_id IS DISTINCT FROM c.department_id
"""

CURRENT_CATALOG = """
SELECT product_id, any_value(product_name) AS product_name, any_value(aisle_id) AS aisle_id,
       any_value(department_id) AS department_id
FROM read_parquet(?, hive_partitioning = false)
WHERE is_current
GROUP BY product_id
"""
CATALOG_CHANGED_SQL = f"""
CREATE OR REPLACE TEMP TABLE inc_catalog_changed AS
WITH new AS ({CURRENT_CATALOG}), old AS ({CURRENT_CATALOG})
SELECT product_id
FROM new FULL JOIN old USING (product_id)
WHERE new.product_name IS DISTINCT FROM old.product_name
   OR new.aisle_id IS DISTINCT FROM old.aisle_id
   OR new.department_id IS DISTINCT FROM old.department_id
"""

FALLBACK_GAP_SQL = """
SELECT (SELECT round(avg(days_since_prior_order)) FROM inc_all_orders)::TINYINT
           IS DISTINCT FROM
       (SELECT any_value(t_days_since_prior) FROM inc_prev_user
        WHERE framing = 'serving' AND u_days_between_mean IS NULL)
"""

AFFECTED_SQL = """
CREATE OR REPLACE TEMP TABLE inc_users AS
SELECT user_id, bool_or(reason = 'batch') AS batch, bool_or(reason = 'moved') AS moved,
       bool_or(reason = 'gap') AS gap
FROM (
    SELECT user_id, 'batch' AS reason FROM inc_batch_users
    UNION ALL
    SELECT DISTINCT user_id, 'moved' FROM inc_prev_up WHERE product_id IN (SELECT product_id FROM inc_moved)
    UNION ALL
    SELECT user_id, 'gap' FROM inc_prev_user
    WHERE $gap_changed AND framing = 'serving' AND u_days_between_mean IS NULL
)
GROUP BY user_id
"""

# Why a user was rebuilt, one reason per user (the first that applies, in this order).
REASON_BATCH = "new order or line"
REASON_MOVED = "moved product"
REASON_GAP = "fallback gap"
REASON_FULL = "full build"
AFFECTED_IDS_SELECT = f"""
SELECT user_id,
       CASE WHEN batch THEN '{REASON_BATCH}' WHEN moved THEN '{REASON_MOVED}' ELSE '{REASON_GAP}' END AS reason
FROM inc_users
ORDER BY user_id
"""
# On a full build every user known to the lake (any clean order) is affected.
FULL_BUILD_AFFECTED_SELECT = f"""
SELECT DISTINCT user_id::INTEGER AS user_id, '{REASON_FULL}' AS reason
FROM read_parquet($orders, hive_partitioning = false)
ORDER BY user_id
"""


def first_delta(conn: duckdb.DuckDBPyConnection, previous: PreviousFeatures) -> str | None:
    """The first previous table the update reads that is stored as a feature delta, or None."""
    return next((uri for uri in previous.read_by_update if delta_info(conn, uri) is not None), None)


def delta_chain(
    conn: duckdb.DuckDBPyConnection,
    previous: PreviousFeatures,
    previous_batch: str,
    batch: str,
    max_deltas: int,
) -> DeltaChain | None:
    """Where `batch`'s delta goes on top of the previous batch's tables, or None when the chain would
    then hold more than `max_deltas` deltas: the batch writes whole tables (compaction)."""
    chain = chain_after(conn, previous.user_features, previous_batch)
    return DeltaChain(batch, chain) if len(chain) <= max_deltas else None


def all_users_affected(
    conn: duckdb.DuckDBPyConnection, orders: Sequence[str], out_path: StagedLocation
) -> StagedParquet:
    """The affected users of a full build: every user of the clean orders, reason `full build`."""
    if not orders:
        return copy_to_parquet(
            conn, "SELECT NULL::INTEGER AS user_id, NULL::VARCHAR AS reason WHERE false", out_path
        )
    return copy_to_parquet(conn, FULL_BUILD_AFFECTED_SELECT, out_path, params={"orders": list(orders)})


# The snapshot restricted to the affected users, under the names the feature SQL reads.
RESTRICTED_ORDERS_SQL = """
CREATE OR REPLACE TEMP TABLE feat_clean_orders AS
SELECT * FROM inc_all_orders WHERE user_id IN (SELECT user_id FROM inc_users)
"""
RESTRICTED_LINES_SQL = """
CREATE OR REPLACE TEMP TABLE feat_clean_lines AS
SELECT order_id, product_id, add_to_cart_order, reordered
FROM inc_all_lines
WHERE order_id IN (SELECT order_id FROM feat_clean_orders)
"""

# A previous user x product row as the raw sums product features aggregate.
RECOVERED = """
SELECT framing, user_id, product_id, up_orders AS n, up_first_order AS first_seq, up_last_order AS last_seq,
       round(up_cart_mean::DOUBLE * up_orders)::INTEGER AS cart_sum,
       round(up_reorder_share::DOUBLE * up_orders)::SMALLINT AS reordered_sum,
       up_cart_mean::DOUBLE * up_orders AS cart_exact
FROM inc_prev_up
"""
CONTRIBUTION = "framing, user_id, product_id, n, first_seq, last_seq, cart_sum, reordered_sum"

# The affected users' previous contributions (recovered sums), read once: what the touched products'
# test compares and what the additive product update subtracts.
OLD_CONTRIBUTIONS_SQL = f"""
CREATE OR REPLACE TEMP TABLE inc_up_old AS
SELECT * FROM ({RECOVERED}) WHERE user_id IN (SELECT user_id FROM inc_users)
"""
# A recovered row whose cart sum is not provably exact.
UNRECOVERABLE = f"(cart_exact >= {MAX_RECOVERED_SUM} OR abs(cart_exact - cart_sum) > 0.25)"
OLD_RECOVERY_CHECK_SQL = f"SELECT count(*) FROM inc_up_old WHERE {UNRECOVERABLE}"

# Products whose contribution from an affected user appeared, disappeared or changed.
TOUCHED_PRODUCTS_SQL = """
CREATE OR REPLACE TEMP TABLE inc_products AS
SELECT product_id
FROM inc_up_old AS old FULL JOIN inc_up_affected AS new USING (framing, user_id, product_id)
WHERE old.n IS DISTINCT FROM new.n
   OR old.first_seq IS DISTINCT FROM new.first_seq
   OR old.last_seq IS DISTINCT FROM new.last_seq
   OR old.cart_sum IS DISTINCT FROM new.cart_sum
   OR old.reordered_sum IS DISTINCT FROM new.reordered_sum
UNION SELECT product_id FROM inc_moved
UNION SELECT product_id FROM inc_catalog_changed
"""

# The additive update: a touched product's sums are its previous row's, recovered from the stored
# ratios (exact below 2^23, as the user x product sums), less the affected users' old contributions,
# plus their new ones. Every other buyer's rows are never read.
PREVIOUS_PRODUCT_SUMS_SQL = """
CREATE OR REPLACE TEMP TABLE inc_product_old_sums AS
SELECT framing, product_id,
       p_orders::BIGINT AS purchases,
       p_buyers::BIGINT AS buyers,
       p_reorder_prob::DOUBLE * p_buyers AS rebuyers,
       p_reorder_ratio::DOUBLE * p_orders AS reordered,
       p_cart_mean::DOUBLE * p_orders AS cart_sum,
       coalesce(p_orders_between_mean::DOUBLE * (p_orders - p_buyers), 0) AS orders_spanned
FROM inc_prev_product
WHERE product_id IN (SELECT product_id FROM inc_products)
"""
PREVIOUS_PRODUCT_CHECK_SQL = f"""
SELECT count(*) FROM inc_product_old_sums
WHERE greatest(rebuyers, reordered, cart_sum, orders_spanned) >= {MAX_RECOVERED_SUM}
"""
ADDITIVE_PRODUCT_SQL = f"""
CREATE OR REPLACE TEMP TABLE inc_product_rows AS
WITH contributions AS (
    SELECT framing, product_id, purchases, buyers, round(rebuyers)::BIGINT AS rebuyers,
           round(reordered)::BIGINT AS reordered, round(cart_sum)::BIGINT AS cart_sum,
           round(orders_spanned)::BIGINT AS orders_spanned
    FROM inc_product_old_sums
    UNION ALL
    SELECT framing, product_id, sign * n, sign, sign * (n > 1)::INTEGER, sign * reordered_sum,
           sign * cart_sum, sign * CASE WHEN n > 1 THEN last_seq - first_seq ELSE 0 END
    FROM (
        SELECT framing, product_id, n, first_seq, last_seq, cart_sum, reordered_sum, -1 AS sign FROM inc_up_old
        UNION ALL
        SELECT framing, product_id, n, first_seq, last_seq, cart_sum, reordered_sum, 1 FROM inc_up_affected
    )
    WHERE product_id IN (SELECT product_id FROM inc_products)
),
p AS (
    SELECT framing, product_id, sum(purchases) AS purchases, sum(buyers) AS buyers,
           sum(rebuyers) AS rebuyers, sum(reordered) AS reordered, sum(cart_sum) AS cart_sum,
           CASE WHEN sum(rebuyers) > 0 THEN sum(orders_spanned) END AS orders_spanned,
           CASE WHEN sum(rebuyers) > 0 THEN sum(purchases) - sum(buyers) END AS repeat_purchases
    FROM contributions
    GROUP BY framing, product_id
    HAVING sum(buyers) > 0
)
{PRODUCT_ROW_SELECT.format(sums="p")}"""

# The re-aggregation, when a previous sum is too large to recover: feat_up for the touched products
# only, over every buyer: the columns PRODUCT_SQL reads.
TOUCHED_PURCHASES_SQL = f"""
INSERT INTO feat_up (framing, user_id, product_id, n, first_seq, last_seq, cart_sum, reordered_sum)
SELECT {CONTRIBUTION} FROM inc_up_affected WHERE product_id IN (SELECT product_id FROM inc_products)
UNION ALL
SELECT {CONTRIBUTION} FROM ({RECOVERED})
WHERE product_id IN (SELECT product_id FROM inc_products)
  AND user_id NOT IN (SELECT user_id FROM inc_users)
"""
RECOVERY_CHECK_SQL = f"""
SELECT count(*) FROM ({RECOVERED})
WHERE product_id IN (SELECT product_id FROM inc_products)
  AND {UNRECOVERABLE}
"""
MERGED_PRODUCT_SQL = """
CREATE OR REPLACE TEMP TABLE inc_product_merged AS
SELECT * FROM inc_prev_product WHERE product_id NOT IN (SELECT product_id FROM inc_products)
UNION ALL
SELECT * FROM inc_product_rows
"""
MERGED_PRODUCT_SELECT = "SELECT * FROM feat_product ORDER BY framing, product_id"

MERGED_USER_SELECT = """
SELECT * FROM inc_prev_user WHERE user_id NOT IN (SELECT user_id FROM inc_users)
UNION ALL
SELECT * FROM inc_user_rows
ORDER BY framing, user_id
"""
MERGED_USER_PRODUCT_SELECT = """
SELECT * FROM inc_prev_up WHERE user_id NOT IN (SELECT user_id FROM inc_users)
UNION ALL
SELECT * FROM inc_up_rows
ORDER BY framing, user_id, product_id
"""

# The sets' inputs over every user, from the merged user_features: the frame and the user columns.
SET_FRAMES_SQL = """
CREATE OR REPLACE TEMP TABLE feat_frames AS
SELECT framing, user_id, target_order_id, target_set, t_dow, t_hour, t_days_since_prior
FROM read_parquet($merged, hive_partitioning = false)
"""
SET_USERS_SQL = """
CREATE OR REPLACE TEMP TABLE feat_user AS
SELECT framing, user_id, {columns} FROM read_parquet($merged, hive_partitioning = false)
"""
# Target lines of unaffected users are the labelled candidates of the previous training_set: the label
# only ever joins a candidate, so these are all the target lines the training_set select can match.
SET_TARGET_LINES_SQL = """
CREATE OR REPLACE TEMP TABLE feat_target_lines AS
SELECT order_id, product_id FROM inc_target_lines
UNION ALL
SELECT order_id, product_id FROM inc_prev_training
WHERE label = 1 AND user_id NOT IN (SELECT user_id FROM inc_users)
"""


def update_features(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    previous: PreviousFeatures,
    batch_orders: Sequence[str],
    batch_lines: Sequence[str],
    scratch: StagedLocation,
    delta: DeltaChain | None = None,
    additive: bool = True,
) -> IncrementalResult:
    """The feature tables as of `snapshot` (history up to and including the new batch), from `previous`
    (the tables as of the batch before, each a base or a delta chain) and the new batch's clean orders /
    lines files.

    Without `delta`, whole tables staged in `scratch` like build_features, with the same rows as
    build_features(conn, snapshot, ...) would give (the level tables ordered by their keys, the sets
    unordered): a base, what a compaction writes. With `delta`, each table staged as this batch's
    delta on `delta.chain` (lake/feature_delta.py), which resolves to those same rows.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    if isinstance(scratch, Path):  # a StagingUri (the Spark job on EMR) has no folders to make
        scratch.mkdir(parents=True, exist_ok=True)
    _open(conn, snapshot, previous, batch_orders, batch_lines)
    conn.execute(BATCH_USERS_SQL)
    conn.execute(MOVED_SQL)
    if previous.products is not None:
        conn.execute(CATALOG_CHANGED_SQL, [snapshot.products, previous.products])
    else:
        conn.execute("CREATE OR REPLACE TEMP TABLE inc_catalog_changed (product_id INTEGER)")
    gap_changed = bool(scalar(conn, FALLBACK_GAP_SQL))
    conn.execute(AFFECTED_SQL, {"gap_changed": gap_changed})
    lap("scope")

    # Affected users: the full build's SQL over their whole history.
    conn.execute(RESTRICTED_ORDERS_SQL)
    conn.execute(RESTRICTED_LINES_SQL)
    build_roles(conn)
    build_purchases(conn)
    build_users(conn)
    fill_serving_targets(conn, all_orders="inc_all_orders")
    build_affinity(conn)
    conn.execute(f"CREATE OR REPLACE TEMP TABLE inc_up_rows AS {USER_PRODUCT_SELECT}")
    conn.execute("ALTER TABLE feat_target_lines RENAME TO inc_target_lines")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE inc_user_rows AS {USER_FEATURES_SELECT}")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE inc_up_affected AS SELECT {CONTRIBUTION} FROM feat_up")
    for table in ("feat_user_aisle", "feat_user_department", "feat_clean_lines"):
        conn.execute(f"DROP TABLE {table}")
    lap("users")

    # Touched products: their previous sums updated by the affected users' change, or (a previous
    # sum too large to recover exactly) re-aggregated over every buyer.
    conn.execute(OLD_CONTRIBUTIONS_SQL)
    conn.execute(TOUCHED_PRODUCTS_SQL)
    if additive:
        conn.execute(PREVIOUS_PRODUCT_SUMS_SQL)
    if additive and not scalar(conn, OLD_RECOVERY_CHECK_SQL) and not scalar(conn, PREVIOUS_PRODUCT_CHECK_SQL):
        conn.execute(ADDITIVE_PRODUCT_SQL)
        product_update = ADDITIVE
    else:
        if bad := scalar(conn, RECOVERY_CHECK_SQL):
            raise ValueError(f"{bad} previous user x product cart sums cannot be recovered exactly")
        conn.execute(PURCHASES_SCHEMA_SQL)
        conn.execute(TOUCHED_PURCHASES_SQL)
        build_products(conn)
        conn.execute("ALTER TABLE feat_product RENAME TO inc_product_rows")
        product_update = REAGGREGATED
    conn.execute(MERGED_PRODUCT_SQL)
    conn.execute("ALTER TABLE inc_product_merged RENAME TO feat_product")
    lap("products")

    write = _write_whole if delta is None else functools.partial(_write_deltas, delta=delta)
    tables = write(conn, scratch, lap=lap)

    affected_ids = copy_to_parquet(conn, AFFECTED_IDS_SELECT, scratch / "affected_user_ids.parquet")
    product_ids = copy_to_parquet(
        conn,
        "SELECT product_id FROM inc_products ORDER BY product_id",
        scratch / "touched_product_ids.parquet",
    )
    counts = conn.execute(
        "SELECT count(*) FILTER (WHERE batch), count(*) FILTER (WHERE moved), count(*) FILTER (WHERE gap),"
        " count(*), (SELECT count(*) FROM inc_moved), (SELECT count(*) FROM inc_catalog_changed)"
        " FROM inc_users"
    ).fetchall()[0]
    _close(conn)
    lap("finish")
    return IncrementalResult(
        tables=tables,
        affected_user_ids=affected_ids,
        touched_product_ids=product_ids,
        batch_users=int(counts[0]),
        moved_product_buyers=int(counts[1]),
        fallback_gap_users=int(counts[2]),
        affected_users=int(counts[3]),
        touched_products=product_ids.row_count,
        moved_products=int(counts[4]),
        catalog_changed_products=int(counts[5]),
        product_update=product_update,
        seconds=seconds,
    )


def update_last_batch(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    previous: PreviousFeatures,
    scratch: StagedLocation,
    delta: DeltaChain | None = None,
    additive: bool = True,
) -> IncrementalResult:
    """update_features with the snapshot's last batch (its last clean orders and lines files) as the
    new batch: the curated step's update, on either engine (features/full_build.py)."""
    return update_features(
        conn,
        snapshot,
        previous,
        [snapshot.orders[-1]],
        [snapshot.order_products[-1]],
        scratch,
        delta=delta,
        additive=additive,
    )


def _write_whole(
    conn: duckdb.DuckDBPyConnection, scratch: StagedLocation, lap: Callable[[str], None]
) -> FeatureTables:
    """Every table whole: the previous rows of unaffected users and products merged with the new ones."""
    user_features = copy_to_parquet(conn, MERGED_USER_SELECT, scratch / "user_features.parquet")
    product_features = copy_to_parquet(conn, MERGED_PRODUCT_SELECT, scratch / "product_features.parquet")
    user_product = copy_to_parquet(
        conn, MERGED_USER_PRODUCT_SELECT, scratch / "user_product_features.parquet"
    )
    lap("level_tables")

    # The sets: the full build's join over the merged level tables (no aggregate; reads every row).
    conn.execute(SET_FRAMES_SQL, {"merged": str(user_features.path)})
    conn.execute(SET_USERS_SQL.format(columns=", ".join(USER_FEATURES)), {"merged": str(user_features.path)})
    conn.execute(SET_TARGET_LINES_SQL)
    training = copy_to_parquet(conn, training_select(user_product.path), scratch / "training_set.parquet")
    inference = copy_to_parquet(conn, inference_select(user_product.path), scratch / "inference_set.parquet")
    lap("sets")
    return FeatureTables(
        user_features=user_features,
        product_features=product_features,
        user_product_features=user_product,
        training_set=training,
        inference_set=inference,
    )


# A delta's rows: only the affected users' (touched products') new rows; the tombstones are those keys.
AFFECTED_USERS = "SELECT user_id FROM inc_users"
DELTA_FRAMES_SQL = """
CREATE OR REPLACE TEMP TABLE feat_frames AS
SELECT framing, user_id, target_order_id, target_set, t_dow, t_hour, t_days_since_prior FROM inc_user_rows
"""
DELTA_USERS_SQL = (
    "CREATE OR REPLACE TEMP TABLE feat_user AS SELECT framing, user_id, {columns} FROM inc_user_rows"
)


def _write_deltas(
    conn: duckdb.DuckDBPyConnection, scratch: Path, lap: Callable[[str], None], delta: DeltaChain
) -> FeatureTables:
    """Every table as this batch's delta: the affected users' rows (touched products' for
    product_features) and their keys as tombstones; set rows without the product columns, which the
    resolver joins from product_features."""

    def info(table: str, product_columns: tuple[str, ...] = ()) -> DeltaInfo:
        return DeltaInfo(table, delta.batch, delta.chain, product_columns)

    user_features = write_delta(
        conn,
        "SELECT * FROM inc_user_rows ORDER BY framing, user_id",
        AFFECTED_USERS,
        info("user_features"),
        scratch / "user_features.parquet",
    )
    product_features = write_delta(
        conn,
        "SELECT * FROM inc_product_rows ORDER BY framing, product_id",
        "SELECT product_id FROM inc_products",
        info("product_features"),
        scratch / "product_features.parquet",
    )
    user_product = write_delta(
        conn,
        "SELECT * FROM inc_up_rows ORDER BY framing, user_id, product_id",
        AFFECTED_USERS,
        info("user_product_features"),
        scratch / "user_product_features.parquet",
    )
    lap("level_tables")

    # The sets of the affected users only: the full build's join over their rows (the up delta's
    # tombstones have no framing and join nothing), with the current product rows.
    conn.execute(DELTA_FRAMES_SQL)
    conn.execute(DELTA_USERS_SQL.format(columns=", ".join(USER_FEATURES)))
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE feat_target_lines AS SELECT order_id, product_id FROM inc_target_lines"
    )
    products = tuple(PRODUCT_FEATURES)
    narrow = "SELECT * EXCLUDE ({columns}) FROM ({select})"
    sets = {}
    for name, select in (("training_set", training_select), ("inference_set", inference_select)):
        sets[name] = write_delta(
            conn,
            narrow.format(columns=", ".join(products), select=select(user_product.path)),
            AFFECTED_USERS,
            info(name, products),
            scratch / f"{name}.parquet",
        )
    lap("sets")
    return FeatureTables(
        user_features=user_features,
        product_features=product_features,
        user_product_features=user_product,
        training_set=sets["training_set"],
        inference_set=sets["inference_set"],
    )


def _open(
    conn: duckdb.DuckDBPyConnection,
    snapshot: CleanSnapshot,
    previous: PreviousFeatures,
    batch_orders: Sequence[str],
    batch_lines: Sequence[str],
) -> None:
    for view in ("feat_clean_orders", "feat_clean_lines"):
        conn.execute(f"DROP VIEW IF EXISTS {view}")
    open_snapshot(conn, snapshot)  # feat_catalog; the two views are replaced by restricted tables below
    for view in ("feat_clean_orders", "feat_clean_lines"):
        conn.execute(f"DROP VIEW {view}")
    create_view(conn, "inc_all_orders", snapshot.orders, CLEAN_ORDERS_SCHEMA)
    create_view(conn, "inc_all_lines", snapshot.order_products, CLEAN_ORDER_PRODUCTS_SCHEMA)
    create_view(conn, "inc_batch_orders", batch_orders, CLEAN_ORDERS_SCHEMA)
    create_view(conn, "inc_batch_lines", batch_lines, CLEAN_ORDER_PRODUCTS_SCHEMA)
    for name, uri in zip(
        ("inc_prev_user", "inc_prev_product", "inc_prev_up", "inc_prev_training"),
        previous.read_by_update,
        strict=True,
    ):
        conn.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {feature_source(conn, uri)}")


def _close(conn: duckdb.DuckDBPyConnection) -> None:
    for table in TEMP_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    for view in VIEWS:
        conn.execute(f"DROP VIEW IF EXISTS {view}")
