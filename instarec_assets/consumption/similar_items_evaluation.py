"""Does the GraphSAGE embedding help the similar items, and by how much: a held-out choice of the blend.

The split is in time and matches the embeddings' `target` framing: each user's latest order is held
out (its lines, when known), every earlier order is what the methods may learn from. The target
embeddings were trained and computed on exactly those earlier orders, so nothing held out leaks in.
From the earlier orders each method lists the top `EVAL_K` similar products per current product; the
held-out truth of a product is the set of current products bought in the same held-out basket with
it. Per method (co-occurrence alone = w 0, the embeddings alone = w 1, the blends between):

- hit rate@k: share of held-out anchors (products in a held-out basket with another current product)
  whose list holds at least one of their held-out co-purchases;
- recall@k: mean over those anchors of |list and co-purchases| / |co-purchases|;
- coverage: share of current products whose list has at least k items.

w is the grid value with the best recall@k (the smaller w on a tie); a w > 0 must beat co-occurrence
alone by `MIN_RELATIVE_GAIN`, so noise in a small held-out set (or a random hit of a cold product's
filled list) does not switch the blend on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from instarec_assets.consumption.similar_counts import (
    cooccurrence_from_counts,
    current_baskets,
    without_orders,
)
from instarec_assets.consumption.similar_items import (
    COOCCURRENCE_CANDIDATES,
    MIN_SUPPORT,
    PairTable,
    blend_candidates,
    check_parameters,
    cooccurrence_pairs,
    current_products,
    embedding_neighbours,
    rank_blend,
    restrict,
    runs,
)
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.lake.duck import create_view
from instarec_assets.ml.graphsage.explore import EmbeddingTable

EVAL_K = 10
WEIGHT_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MIN_RELATIVE_GAIN = 0.01

# Each user's latest order by order_number, as the graph's and the feature sets' target framing.
HELD_OUT_SPLIT_SQL = """
CREATE OR REPLACE TEMP TABLE similar_latest_orders AS
SELECT order_id FROM similar_eval_orders
QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY order_number DESC, order_id DESC) = 1;
CREATE OR REPLACE TEMP VIEW similar_fit_lines AS
SELECT * FROM similar_eval_lines ANTI JOIN similar_latest_orders USING (order_id);
CREATE OR REPLACE TEMP VIEW similar_held_out_lines AS
SELECT * FROM similar_eval_lines SEMI JOIN similar_latest_orders USING (order_id);
"""

# Distinct (anchor, co-purchased) pairs of current products in the held-out baskets, as one key.
HELD_OUT_PAIRS_SQL = """
WITH catalog AS (
    SELECT DISTINCT product_id FROM read_parquet($products, hive_partitioning = false) WHERE is_current
),
lines AS (
    SELECT DISTINCT order_id, product_id FROM similar_held_out_lines SEMI JOIN catalog USING (product_id)
)
SELECT DISTINCT (a.product_id::BIGINT << 32) | b.product_id::BIGINT AS pair
FROM lines AS a JOIN lines AS b ON a.order_id = b.order_id AND a.product_id <> b.product_id
ORDER BY pair
"""

HELD_OUT_ORDERS_SQL = "SELECT count(DISTINCT order_id) FROM similar_held_out_lines"


@dataclass(frozen=True)
class MethodScore:
    """One method's held-out metrics."""

    method: str
    weight: float
    hit_rate: float
    recall: float
    coverage: float


@dataclass(frozen=True)
class BlendEvaluation:
    """The methods' held-out metrics and the weight chosen for the served lists."""

    scores: tuple[MethodScore, ...]
    chosen_weight: float
    k: int
    held_out_orders: int
    anchors: int
    cold_anchors: int  # held-out anchors with no co-occurrence pair in the earlier orders
    embeddings: bool  # False: no embeddings to blend, co-occurrence alone was evaluated

    def table(self) -> pd.DataFrame:
        frame = pd.DataFrame([asdict(score) for score in self.scores])
        return frame.rename(
            columns={
                "hit_rate": f"hit_rate@{self.k}",
                "recall": f"recall@{self.k}",
                "coverage": f"coverage@{self.k}",
            }
        )

    def markdown(self) -> str:
        chosen = self.table()
        chosen.insert(2, "chosen", ["yes" if s.weight == self.chosen_weight else "" for s in self.scores])
        return chosen.to_markdown(index=False, floatfmt=".4f")

    def as_dict(self) -> dict:
        return {**asdict(self), "scores": [asdict(score) for score in self.scores]}


def method_name(weight: float) -> str:
    if weight == 0:
        return "co-occurrence"
    return "embeddings" if weight == 1 else "blend"


def held_out_metrics(
    ranked: PairTable, held_out: np.ndarray, n_current: int, k: int
) -> tuple[float, float, float]:
    """(hit rate@k, recall@k, coverage@k) of ranked lists against sorted held-out pair keys."""
    keep = ranked.rank <= k
    left, right = ranked.product_id[keep], ranked.similar_product_id[keep]
    listed = runs(left)  # ranked lists are sorted by product
    coverage = float((listed[1] >= k).sum()) / n_current if n_current else 0.0
    if held_out.size == 0:
        return 0.0, 0.0, coverage
    anchors, truth = runs(held_out >> 32)  # held-out keys are sorted
    keys = (left << 32) | right
    hit = np.isin(keys, held_out, assume_unique=True)
    hits = np.bincount(np.searchsorted(anchors, left[hit]), minlength=anchors.size)
    return float((hits > 0).mean()), float((hits / truth).mean()), coverage


def choose_weight(scores: Sequence[MethodScore], min_relative_gain: float = MIN_RELATIVE_GAIN) -> float:
    """The best recall (smaller weight on a tie); w 0 unless a blend beats it by the margin."""
    base = next(score for score in scores if score.weight == 0)
    best = max(scores, key=lambda score: (score.recall, -score.weight))
    return best.weight if best.recall > base.recall * (1 + min_relative_gain) else 0.0


def _fit_pairs_from_counts(
    conn: duckdb.DuckDBPyConnection,
    counts_uri: str,
    order_products_uris: Sequence[str],
    products_uri: str,
    min_support: int,
    work_dir: Path,
) -> dict[str, np.ndarray]:
    """cooccurrence_pairs over similar_fit_lines, from the history's counts less the held-out
    orders' (counts add over baskets; a recount of 30M lines took 97 s at full size)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    fit_counts = without_orders(
        conn,
        counts_uri,
        list(order_products_uris),
        "SELECT order_id FROM similar_latest_orders",
        {},
        work_dir / "similar_fit_counts.parquet",
        min_support,
    )
    baskets = current_baskets(conn, "similar_fit_lines", products_uri)
    return cooccurrence_from_counts(
        conn, str(fit_counts.path), products_uri, baskets, min_support, COOCCURRENCE_CANDIDATES
    )


def evaluate_blends(
    conn: duckdb.DuckDBPyConnection,
    orders_uris: Sequence[str],
    order_products_uris: Sequence[str],
    products_uri: str,
    embeddings: EmbeddingTable | None,
    k: int = EVAL_K,
    min_support: int = MIN_SUPPORT,
    grid: Sequence[float] = WEIGHT_GRID,
    counts_uri: str | None = None,
    work_dir: Path | None = None,
) -> BlendEvaluation:
    """Every weight of `grid` on the held-out latest orders, with `embeddings` from the orders before
    them (the target framing); None or empty embeddings evaluate co-occurrence alone. `counts_uri`,
    the whole history's co-purchase counts (similar_item_counts), gives the earlier orders' pairs as
    those counts minus the held-out baskets' own (written under `work_dir`): the same pairs as a
    recount, without one."""
    check_parameters(k, min_support)
    if counts_uri is not None and work_dir is None:
        raise ValueError("similar items evaluation: counts_uri needs a work_dir for the reduced counts")
    for weight in grid:
        check_parameters(k, min_support, weight)
    create_view(conn, "similar_eval_orders", orders_uris, CLEAN_ORDERS_SCHEMA)
    create_view(conn, "similar_eval_lines", order_products_uris, CLEAN_ORDER_PRODUCTS_SCHEMA)
    conn.execute(HELD_OUT_SPLIT_SQL)
    current = current_products(conn, products_uri)
    pairs = (
        cooccurrence_pairs(conn, "similar_fit_lines", products_uri, min_support)
        if counts_uri is None
        else _fit_pairs_from_counts(
            conn, counts_uri, order_products_uris, products_uri, min_support, work_dir
        )
    )
    held_out = np.asarray(
        conn.execute(HELD_OUT_PAIRS_SQL, {"products": products_uri}).fetchnumpy()["pair"], dtype=np.int64
    )
    held_out_orders = int(conn.execute(HELD_OUT_ORDERS_SQL).fetchall()[0][0])
    table = restrict(embeddings, current) if embeddings is not None else None
    usable = table is not None and table.ids.size > 1
    neighbours = embedding_neighbours(table, k) if usable else None
    weights = sorted({0.0, *grid}) if usable else [0.0]
    candidates = blend_candidates(pairs, table, neighbours)  # once for every weight
    scores = tuple(
        MethodScore(
            method_name(weight),
            float(weight),
            *held_out_metrics(rank_blend(candidates, weight, k), held_out, current.size, k),
        )
        for weight in weights
    )
    anchors = runs(held_out >> 32)[0]
    return BlendEvaluation(
        scores=scores,
        chosen_weight=choose_weight(scores),
        k=k,
        held_out_orders=held_out_orders,
        anchors=int(anchors.size),
        cold_anchors=int((~np.isin(anchors, pairs["product_id"])).sum()),
        embeddings=usable,
    )
