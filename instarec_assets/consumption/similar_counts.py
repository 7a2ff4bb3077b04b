"""Co-purchase counts kept between batches, so a batch's similar items cost what the batch brings.

A pair's shared-basket count and a product's basket count are sums over baskets, and a basket's
lines are clean in exactly one batch each (an (order, product) line already stored is a duplicate,
never clean again), so counts add over batches. A late line of an earlier order (a `test` order's
lines arrive a batch later) adds the pairs it forms with that order's earlier lines: the update
reads the earlier lines of the orders the batch touches, nothing else of the history's baskets.

One file per batch (`similar_item_counts`), rows `(kind, product_id, other_id, together)` with
product_id < other_id for pairs:

- `strong`: every pair with at least `min_support` shared baskets (cumulative): all the lists need;
- `weak`: pairs below it. A full build stores all of them; an incremental batch only those touched
  since that full build (its `base`), with their cumulative count: a pair's count is the batch's
  weak row, else the base's weak row, else 0, which is how a pair crossing `min_support` is found;
- `popularity`: each product's basket count (other_id 0), cumulative, every product ever bought.

The lists are then ranked from `strong` and `popularity` for every anchor (no basket self-join), with
the same arithmetic as the SQL over baskets, so they equal a full recompute row for row (tested). The
basket total (lift's denominator) is one count over the history's order ids, a scan, not a join.

Why every list is ranked again on an increment rather than only the touched products' lists: the
score divides by both products' basket counts and lift by the history's basket total, and a weekly
batch moves the basket count of most products (37,709 of 49,538 at full size), so nearly every
list's scores move (no row of the 2025-01-13 lists equals its 2025-01-06 row; the embedding cosines
move too, the embeddings being inferred again over the new graph). Carrying lists would not equal a
full rebuild; the ranking is made cheap instead (numpy, a score-bin pre-selection per product), and
the counts update merges the batch's sorted pairs into the previous sorted rows rather than joining
and sorting all of them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.duck import StagedParquet, copy_to_parquet, create_view, scalar

STRONG, WEAK, POPULARITY = "strong", "weak", "popularity"
COUNTS_SCHEMA = """
SELECT NULL::VARCHAR AS kind, NULL::INTEGER AS product_id, NULL::INTEGER AS other_id,
       NULL::BIGINT AS together
WHERE false
"""

# Pairs and popularity of a set of lines: `count_lines` (order_id, product_id, new) where `new` marks the
# lines being added; earlier lines of the same orders only pair with new ones.
PAIR_COUNTS_SQL = """
SELECT a.product_id, b.product_id AS other_id, count(*)::BIGINT AS together
FROM count_lines AS a JOIN count_lines AS b
  ON a.order_id = b.order_id AND a.product_id < b.product_id AND (a.new OR b.new)
GROUP BY ALL
"""
POPULARITY_SQL = """
SELECT product_id, count(*)::BIGINT AS baskets FROM count_lines WHERE new GROUP BY ALL
"""

FULL_COUNTS_SQL = """
WITH pairs AS ({pairs})
SELECT CASE WHEN together >= $min_support THEN 'strong' ELSE 'weak' END AS kind,
       product_id::INTEGER AS product_id, other_id::INTEGER AS other_id, together
FROM pairs
UNION ALL
SELECT 'popularity', product_id::INTEGER, 0, baskets FROM ({popularity})
ORDER BY kind, product_id, other_id
"""


def ranked_cooccurrence_sql(baskets: str) -> str:
    """The scoring and ranking both co-occurrence queries end with (over stored counts here, over
    baskets in similar_items.COOCCURRENCE_SQL): one text, so the two paths give identical doubles.

    It follows CTEs `pairs` (product_id, similar_product_id, together) and `popularity` (product_id,
    baskets); `baskets` is the SQL of lift's basket total. Keeps each product's $candidates best pairs
    by co-occurrence, then shared baskets, then product id.
    """
    return f"""scored AS (
    SELECT pairs.product_id, pairs.similar_product_id, pairs.together,
           pairs.together / sqrt(pa.baskets * pb.baskets) AS cooccurrence,
           pairs.together * {baskets} / (pa.baskets * pb.baskets) AS lift
    FROM pairs
    JOIN popularity AS pa ON pa.product_id = pairs.product_id
    JOIN popularity AS pb ON pb.product_id = pairs.similar_product_id
)
SELECT product_id::BIGINT AS product_id, similar_product_id::BIGINT AS similar_product_id,
       together::BIGINT AS together, cooccurrence::DOUBLE AS cooccurrence, lift::DOUBLE AS lift
FROM scored
QUALIFY row_number() OVER (
    PARTITION BY product_id ORDER BY cooccurrence DESC, together DESC, similar_product_id
) <= $candidates
ORDER BY product_id, similar_product_id
"""


# The inputs of the ranking from stored counts: current products, their basket counts, strong pairs.
CATALOG_SQL = """
SELECT DISTINCT product_id::BIGINT AS product_id
FROM read_parquet($products, hive_partitioning = false) WHERE is_current
"""
COUNTS_POPULARITY_SQL = """
SELECT product_id::BIGINT AS product_id, together AS baskets FROM {counts}
WHERE kind = 'popularity' AND together > 0
"""
COUNTS_STRONG_SQL = """
SELECT product_id, other_id, together FROM {counts} WHERE kind = 'strong' AND together >= $min_support
"""
# Score bins per product for the pre-selection: 2^3 per octave of the co-occurrence (the double's
# exponent and top 3 mantissa bits), so a bin spans at most 12.5% of a score.
SCORE_BIN_SHIFT = 49
# Product ids below this index a dense array; larger ids are looked up by binary search.
DENSE_IDS = 1 << 24

# Baskets holding at least one current product (lift's denominator, as the SQL over baskets counts it).
CURRENT_BASKETS_SQL = """
SELECT count(DISTINCT order_id)::DOUBLE FROM {lines}
SEMI JOIN (SELECT product_id FROM read_parquet($products, hive_partitioning = false) WHERE is_current)
USING (product_id)
"""

# The counts of a history without some orders (the report's `target` framing): the stored counts
# minus those orders' own pairs and baskets. Only a stored strong pair can stay at min_support.
WITHOUT_ORDERS_SQL = """
WITH removed AS ({pairs}),
strong AS (
    SELECT s.product_id, s.other_id, s.together - coalesce(removed.together, 0) AS together
    FROM (SELECT * FROM stored_counts WHERE kind = 'strong') AS s
    LEFT JOIN removed USING (product_id, other_id)
),
popularity AS (
    SELECT p.product_id, p.together - coalesce(r.baskets, 0) AS together
    FROM (SELECT * FROM stored_counts WHERE kind = 'popularity') AS p
    LEFT JOIN ({popularity}) AS r USING (product_id)
)
SELECT 'strong' AS kind, product_id, other_id, together FROM strong WHERE together >= $min_support
UNION ALL
SELECT 'popularity', product_id, 0, together FROM popularity WHERE together > 0
ORDER BY kind, product_id, other_id
"""


@dataclass(frozen=True)
class CountsUpdate:
    """What a counts step did (the asset's metadata)."""

    staged: StagedParquet
    mode: str  # "full" | "incremental"
    new_lines: int  # lines counted this time (every line on a full build)
    late_lines: int  # of those, lines of orders with lines stored in an earlier batch
    delta_pairs: int  # distinct pairs the new lines formed
    strong_pairs: int
    weak_pairs: int
    # the written popularity and strong rows, for ranking them without reading the file back
    stored: StoredCounts | None = None
    moved_products: int = 0  # products whose basket count the new lines changed (all on a full build)


@dataclass(frozen=True)
class StoredCounts:
    """A counts file's popularity and strong rows in memory."""

    products: np.ndarray  # int64, sorted
    baskets: np.ndarray  # int64
    strong: _PairRows


def _lines_view(conn: duckdb.DuckDBPyConnection, name: str, uris: Sequence[str]) -> None:
    create_view(conn, name, uris, CLEAN_ORDER_PRODUCTS_SCHEMA)


def _counted(conn: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(new lines, late lines: new lines of orders with earlier lines)."""
    new, late = conn.execute(
        "SELECT count(*) FILTER (WHERE new), "
        "count(*) FILTER (WHERE new AND order_id IN (SELECT order_id FROM count_lines WHERE NOT new)) "
        "FROM count_lines"
    ).fetchall()[0]
    return int(new), int(late)


def _kinds(conn: duckdb.DuckDBPyConnection, path: Path) -> dict[str, int]:
    rows = conn.execute(
        "SELECT kind, count(*) FROM read_parquet(?, hive_partitioning = false) GROUP BY ALL", [str(path)]
    ).fetchall()
    return {kind: int(n) for kind, n in rows}


def full_counts(
    conn: duckdb.DuckDBPyConnection, history_uris: Sequence[str], out_path: Path, min_support: int
) -> CountsUpdate:
    """The counts of every basket of the history (every batch's clean_order_products)."""
    _lines_view(conn, "count_history", history_uris)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE count_lines AS "
        "SELECT DISTINCT order_id, product_id, true AS new FROM count_history"
    )
    sql = FULL_COUNTS_SQL.format(pairs=PAIR_COUNTS_SQL, popularity=POPULARITY_SQL)
    staged = copy_to_parquet(conn, sql, out_path, params={"min_support": int(min_support)})
    new_lines = int(scalar(conn, "SELECT count(*) FROM count_lines"))
    conn.execute("DROP TABLE count_lines")
    kinds = _kinds(conn, out_path)
    delta = kinds.get(STRONG, 0) + kinds.get(WEAK, 0)
    return CountsUpdate(
        staged,
        "full",
        new_lines,
        0,
        delta,
        kinds.get(STRONG, 0),
        kinds.get(WEAK, 0),
        moved_products=kinds.get(POPULARITY, 0),
    )


def incremental_counts(
    conn: duckdb.DuckDBPyConnection,
    earlier_uris: Sequence[str],
    new_uris: Sequence[str],
    previous_counts_uri: str,
    base_counts_uri: str,
    out_path: Path,
    min_support: int,
    previous_is_base: bool,
) -> CountsUpdate:
    """The previous batch's counts plus the lines of `new_uris` (the batches after it, up to this one).
    `earlier_uris` (the batches the previous counts cover) are read only for the orders the new lines
    belong to. `base_counts_uri`: the full build the previous counts descend from (its weak pairs)."""
    _lines_view(conn, "count_new", new_uris)
    _lines_view(conn, "count_earlier", earlier_uris)
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE count_new_lines AS SELECT DISTINCT order_id, product_id FROM count_new;
        CREATE OR REPLACE TEMP TABLE count_earlier_lines AS
        SELECT DISTINCT order_id, product_id FROM count_earlier
        SEMI JOIN (SELECT DISTINCT order_id FROM count_new_lines) USING (order_id);
        CREATE OR REPLACE TEMP TABLE count_lines AS
        SELECT order_id, product_id, false AS new FROM count_earlier_lines
        UNION ALL
        SELECT order_id, product_id, true FROM count_new_lines
        ANTI JOIN count_earlier_lines USING (order_id, product_id);
        DROP TABLE count_new_lines;
        DROP TABLE count_earlier_lines;
        """
    )
    conn.read_parquet(previous_counts_uri, hive_partitioning=False).create_view(
        "previous_counts", replace=True
    )
    conn.read_parquet(base_counts_uri, hive_partitioning=False).create_view("base_counts", replace=True)
    new_lines, late_lines = _counted(conn)
    delta = _pair_rows(conn, f"SELECT * FROM ({PAIR_COUNTS_SQL})")
    added = conn.sql(POPULARITY_SQL).fetchnumpy()
    conn.execute("DROP TABLE count_lines")
    strong = _pair_rows(
        conn, "SELECT product_id, other_id, together FROM previous_counts WHERE kind = 'strong'"
    )
    recent = (
        _PairRows.empty()
        if previous_is_base
        else _pair_rows(
            conn, "SELECT product_id, other_id, together FROM previous_counts WHERE kind = 'weak'"
        )
    )
    # each touched pair's count so far: its previous strong row, else its previous weak row (a pair
    # touched since the base), else the base's weak row, else 0
    before = np.zeros(delta.keys.size, dtype=np.int64)
    missing = np.ones(delta.keys.size, dtype=bool)
    kept = []
    for rows in (strong, recent):
        at, hit = rows.find(delta.keys)
        hit &= missing
        before[hit], missing[hit] = rows.together[at[hit]], False
        kept.append(rows.dropped(at[hit]))
    if missing.any():
        conn.register("count_missing", delta.select(missing).to_arrow())
        try:
            base = _pair_rows(
                conn,
                "SELECT product_id, other_id, together FROM base_counts "
                "SEMI JOIN count_missing USING (product_id, other_id) WHERE kind = 'weak'",
            )
        finally:
            conn.unregister("count_missing")
        at, hit = base.find(delta.keys)
        hit &= missing
        before[hit] = base.together[at[hit]]
    touched = _PairRows(delta.keys, delta.together + before)
    crossing = touched.together >= min_support
    new_strong = kept[0].merged(touched.select(crossing))
    new_weak = kept[1].merged(touched.select(~crossing))
    previous_popularity = conn.sql(
        "SELECT product_id, together FROM previous_counts WHERE kind = 'popularity'"
    ).fetchnumpy()
    products, baskets = _summed(
        np.concatenate([previous_popularity["product_id"], added["product_id"]]).astype(np.int64),
        np.concatenate([previous_popularity["together"], added["baskets"]]).astype(np.int64),
    )
    table = _counts_table(products, baskets, new_strong, new_weak)
    conn.register("count_out", table)
    try:
        # an Arrow scan keeps its row order (DuckDB preserves insertion order): the rows are written
        # sorted by (kind, product_id, other_id) as a full build writes them
        staged = copy_to_parquet(
            conn,
            "SELECT kind::VARCHAR AS kind, product_id, other_id, together FROM count_out",
            out_path,
        )
    finally:
        conn.unregister("count_out")
    return CountsUpdate(
        staged,
        "incremental",
        new_lines,
        late_lines,
        delta.keys.size,
        new_strong.keys.size,
        new_weak.keys.size,
        stored=StoredCounts(products, baskets, new_strong),
        moved_products=int(np.asarray(added["product_id"]).size),
    )


@dataclass(frozen=True)
class _PairRows:
    """Pair counts sorted by key (product_id << 32 | other_id): the merge of a counts update."""

    keys: np.ndarray  # int64, strictly increasing
    together: np.ndarray  # int64

    @staticmethod
    def empty() -> _PairRows:
        return _PairRows(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of each key."""
        if self.keys.size == 0:
            return np.zeros(keys.size, dtype=np.int64), np.zeros(keys.size, dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return at, self.keys[at] == keys

    def select(self, mask: np.ndarray) -> _PairRows:
        return _PairRows(self.keys[mask], self.together[mask])

    def dropped(self, positions: np.ndarray) -> _PairRows:
        """These rows less those at `positions`."""
        if positions.size == 0:
            return self
        keep = np.ones(self.keys.size, dtype=bool)
        keep[positions] = False
        return self.select(keep)

    def merged(self, other: _PairRows) -> _PairRows:
        """The rows of both (no key in both), sorted: `other` slotted in, no sort of the whole."""
        size = self.keys.size + other.keys.size
        slots = np.searchsorted(self.keys, other.keys) + np.arange(other.keys.size)
        mine = np.ones(size, dtype=bool)
        mine[slots] = False
        keys, together = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)
        keys[slots], together[slots] = other.keys, other.together
        keys[mine], together[mine] = self.keys, self.together
        return _PairRows(keys, together)

    def to_arrow(self) -> pa.Table:
        return pa.table(
            {
                "product_id": pa.array((self.keys >> 32).astype(np.int32)),
                "other_id": pa.array((self.keys & 0xFFFFFFFF).astype(np.int32)),
            }
        )


def _pair_rows(conn: duckdb.DuckDBPyConnection, sql: str) -> _PairRows:
    """A query's (product_id, other_id, together) rows as sorted pair keys."""
    found = conn.sql(
        f"SELECT (product_id::BIGINT << 32) | other_id::BIGINT AS pair, together::BIGINT AS together FROM ({sql})"
    ).fetchnumpy()
    keys, together = np.asarray(found["pair"]), np.asarray(found["together"])
    if keys.size > 1 and not (keys[1:] > keys[:-1]).all():
        order = np.argsort(keys, kind="stable")
        keys, together = keys[order], together[order]
    return _PairRows(keys, together)


def _summed(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ids and the sum of their values."""
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    if ids.size == 0:
        return ids, values
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return ids[starts], np.add.reduceat(values, starts)


def _counts_table(products: np.ndarray, baskets: np.ndarray, strong: _PairRows, weak: _PairRows) -> pa.Table:
    """A counts file's rows in its order: popularity, strong, weak, each by (product_id, other_id)."""
    sizes = (products.size, strong.keys.size, weak.keys.size)
    kinds = np.repeat(np.arange(3, dtype=np.int8), sizes)
    keys = np.concatenate([products << 32, strong.keys, weak.keys])
    return pa.table(
        {
            "kind": pa.DictionaryArray.from_arrays(pa.array(kinds), pa.array([POPULARITY, STRONG, WEAK])),
            "product_id": pa.array((keys >> 32).astype(np.int32)),
            "other_id": pa.array((keys & 0xFFFFFFFF).astype(np.int32)),
            "together": pa.array(np.concatenate([baskets, strong.together, weak.together])),
        }
    )


def without_orders(
    conn: duckdb.DuckDBPyConnection,
    counts_uri: str,
    history_uris: Sequence[str],
    order_ids_sql: str,
    params: dict,
    out_path: Path,
    min_support: int,
) -> StagedParquet:
    """The strong pairs and popularity of the history without the orders `order_ids_sql` selects (a
    query of one `order_id` column with its `params`): the stored counts minus those orders' own."""
    _lines_view(conn, "without_history", history_uris)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE count_lines AS SELECT DISTINCT order_id, product_id, true AS new "
        f"FROM without_history SEMI JOIN ({order_ids_sql}) USING (order_id)",
        params,
    )
    conn.read_parquet(counts_uri, hive_partitioning=False).create_view("stored_counts", replace=True)
    sql = WITHOUT_ORDERS_SQL.format(pairs=PAIR_COUNTS_SQL, popularity=POPULARITY_SQL)
    staged = copy_to_parquet(conn, sql, out_path, params={"min_support": int(min_support)})
    conn.execute("DROP TABLE count_lines")
    return staged


def current_baskets(conn: duckdb.DuckDBPyConnection, lines_view: str, products_uri: str) -> float:
    """Baskets of `lines_view` (a view name of ours) holding a current product."""
    return float(scalar(conn, CURRENT_BASKETS_SQL.format(lines=lines_view), {"products": products_uri}))


def cooccurrence_from_counts(
    conn: duckdb.DuckDBPyConnection,
    counts_uri: str,
    products_uri: str,
    baskets: float,
    min_support: int,
    candidates: int,
    stored: StoredCounts | None = None,
) -> dict[str, np.ndarray]:
    """Each current product's `candidates` best co-occurrence pairs from a counts file (or `stored`,
    the rows just written to it, kept in memory so they are not read back), sorted by
    (product_id, similar_product_id): what similar_items.cooccurrence_pairs gives over the baskets,
    the same doubles (the same IEEE operations as `ranked_cooccurrence_sql`: together / sqrt(pa * pb),
    together * baskets / (pa * pb)) and the same order (co-occurrence, shared baskets, product id).

    Ranked in numpy rather than by a window over every directed pair (twice the strong pairs, 35M at
    full size): a score histogram per product first keeps the score bins that hold its best
    `candidates` (whole bins, so every tie of the last one), which leaves about `candidates` pairs per
    product to sort exactly."""
    catalog = np.asarray(conn.execute(CATALOG_SQL, {"products": products_uri}).fetchnumpy()["product_id"])
    if stored is None:
        conn.read_parquet(counts_uri, hive_partitioning=False).create_view("ranked_counts", replace=True)
        found = conn.execute(COUNTS_POPULARITY_SQL.format(counts="ranked_counts")).fetchnumpy()
        known, bought = (np.asarray(found[name], dtype=np.int64) for name in ("product_id", "baskets"))
        strong = conn.sql(
            COUNTS_STRONG_SQL.format(counts="ranked_counts"), params={"min_support": int(min_support)}
        ).to_arrow_table()
        first_ids, second_ids = (strong.column(name).to_numpy() for name in ("product_id", "other_id"))
        together = strong.column("together").to_numpy()
    else:
        positive = stored.baskets > 0
        known, bought = stored.products[positive], stored.baskets[positive]
        enough = stored.strong.together >= min_support
        keys, together = stored.strong.keys[enough], stored.strong.together[enough]
        first_ids, second_ids = keys >> 32, keys & 0xFFFFFFFF
    current = np.isin(known, catalog)
    ids = known[current]
    order = np.argsort(ids)
    ids, popularity = ids[order], bought[current][order]
    left, right = _positions(ids, first_ids), _positions(ids, second_ids)
    listed = (left >= 0) & (right >= 0)
    if not listed.all():
        left, right, together = left[listed], right[listed], together[listed]
    product = popularity[left] * popularity[right]
    cooccurrence = together / np.sqrt(product.astype(np.float64))
    # whole score bins per product (best first) up to the one holding its `candidates`-th pair
    bins = (cooccurrence.view(np.int64) >> SCORE_BIN_SHIFT).astype(np.int32)
    worse = bins.max(initial=0) - bins
    width = int(worse.max(initial=0)) + 1
    cells = ids.size * width
    if cells >= np.iinfo(np.int32).max:
        left, right = left.astype(np.int64), right.astype(np.int64)
    histogram = np.bincount(left * width + worse, minlength=cells)
    histogram += np.bincount(right * width + worse, minlength=cells)
    cutoff = (np.cumsum(histogram.reshape(ids.size, width), axis=1) < candidates).sum(axis=1)
    first, second = np.flatnonzero(worse <= cutoff[left]), np.flatnonzero(worse <= cutoff[right])
    anchor = np.concatenate([left[first], right[second]])
    other = np.concatenate([right[first], left[second]])
    together = np.concatenate([together[first], together[second]]).astype(np.int64)
    cooccurrence = np.concatenate([cooccurrence[first], cooccurrence[second]])
    product = np.concatenate([product[first], product[second]])
    # ids are sorted, so positions order as the ids do
    ranked = ranked_order(anchor, cooccurrence, together, other)
    grouped = anchor[ranked]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if grouped.size else grouped
    rank = np.arange(grouped.size) - np.repeat(starts, np.diff(np.r_[starts, grouped.size])) + 1
    top = ranked[rank <= candidates]
    top = top[np.argsort(anchor[top].astype(np.int64) * ids.size + other[top], kind="stable")]
    return {
        "product_id": ids[anchor[top]],
        "similar_product_id": ids[other[top]],
        "together": together[top],
        "cooccurrence": cooccurrence[top],
        "lift": together[top] * float(baskets) / product[top].astype(np.float64),
    }


def ranked_order(
    groups: np.ndarray, score: np.ndarray, together: np.ndarray, other: np.ndarray
) -> np.ndarray:
    """The order of np.lexsort((other, -together, -score, groups)) (by group, then score, shared
    baskets and id, best first) as three stable argsorts, about twice as fast: shared baskets and id
    in one int64 key, the score by its IEEE bits (monotone for positive doubles), the group last
    (a radix sort when ids fit 16 bits)."""
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    fits = (
        together.min() >= 0
        and together.max() < 2**31
        and other.min() >= 0
        and other.max() < 2**32
        and score.min() > 0
        and np.isfinite(score).all()
    )
    if not fits:
        return np.lexsort((other, -together, -score, groups))
    second = ((np.int64(2**31) - together.astype(np.int64)) << 32) | other.astype(np.int64)
    order = np.argsort(second, kind="stable")
    order = order[np.argsort(-score.view(np.int64)[order], kind="stable")]
    if groups.min() >= 0 and groups.max() < 2**16:
        groups = groups.astype(np.uint16)
    return order[np.argsort(groups[order], kind="stable")]


def _positions(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's position in `sorted_ids` (int32), -1 where it is absent."""
    values = np.asarray(values, dtype=np.int64)
    if sorted_ids.size and values.size and values.min() >= 0 and values.max() < DENSE_IDS:
        dense = np.full(max(int(sorted_ids[-1]), int(values.max(initial=0))) + 1, -1, dtype=np.int32)
        dense[sorted_ids] = np.arange(sorted_ids.size, dtype=np.int32)
        return dense[values]
    at = np.clip(np.searchsorted(sorted_ids, values), 0, max(sorted_ids.size - 1, 0))
    hit = sorted_ids[at] == values if sorted_ids.size else np.zeros(values.size, dtype=bool)
    return np.where(hit, at, -1).astype(np.int32)


def cooccurrence_arrays(found: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A co-occurrence query's columns as the blend takes them (ids and counts int64, scores float64),
    the same whether the pairs came from counts or from baskets."""
    types = {"product_id": np.int64, "similar_product_id": np.int64, "together": np.int64}
    return {name: np.asarray(values, dtype=types.get(name, np.float64)) for name, values in found.items()}
