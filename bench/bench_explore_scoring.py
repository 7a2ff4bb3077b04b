"""Explore-item scoring methods compared on a materialised batch: hit rate@2 against diversity.

Reads a home where `ranking_report` has run (e.g. the full-size increment bench's home), rebuilds
the report's held-out explore inputs exactly as `ranking_report` does (the held-out validation
users of the batch's model card, their `target`-framing history, the co-purchase lists without any
target order, the whole target order as the truth) and scores each user's new-to-them products
with several co-purchase scorings (the first is the served one), then the served lists themselves as
the report computes them (the same scoring, filled from GraphSAGE for users with fewer than 2
co-purchase neighbours), the popular-items baseline and GraphSAGE's nearest products. The other
scorings are the usual candidates for a popularity-aware or more personal explore slot. Nothing
here changes what is served: it measures the trade-off.

    .venv/bin/python bench/bench_explore_scoring.py --home /tmp/bench-inc-full/incremental_home \
        --partition 2025-01-13 --append-results
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from bench_lake import append_results, machine_description, machine_table

from instarec_assets.consumption.ranking_report import (
    TRAINING_HISTORY_SQL,
    ReportInputs,
    held_out_explore,
    target_similar_items,
    validation_users,
)
from instarec_assets.lake.feature_delta import feature_source, with_feature_tables
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.graphsage.explore import EXPLORE_K
from instarec_assets.ml.ranking import explore_metrics, popular_explore_baseline
from instarec_assets.ml.reorder_model import read_model_card

# (name, score of candidate j for a user, anchors counted, why): summed over the user's products i
# whose co-purchase list (top 20 by cosine) holds j. h = the user x product history row of i,
# s = the list row (score = cosine, together = shared baskets), pi = i's product features.
METHODS = (
    ("sum of cosine (the served scoring)", "sum(s.score)", "true", "what recommendations rank by"),
    ("sum of cosine x times bought", "sum(s.score * h.up_orders)", "true", "anchors weighted by habit"),
    (
        "row-normalised cosine x times bought",
        "sum(s.score / a.total * h.up_orders)",
        "true",
        "each anchor's list sums to 1 (item-based top-N)",
    ),
    ("sum of P(j given i)", "sum(s.together / pi.p_orders)", "true", "conditional co-purchase probability"),
    ("max of P(j given i)", "max(s.together / pi.p_orders)", "true", "the single strongest anchor"),
    ("sum of cosine, last 3 orders", "sum(s.score)", "h.up_in_last_3 > 0", "recent anchors only"),
    ("sum of cosine, last order", "sum(s.score)", "h.up_in_last_1 > 0", "the last basket's anchors"),
    (
        "sum of cosine / basket count^0.25",
        "sum(s.score) / pow(any_value(coalesce(pj.p_orders, 1)), 0.25)",
        "true",
        "popularity discounted",
    ),
    ("sum of log lift", "sum(ln(s.lift))", "true", "lift favours rare products"),
)

SCORED_SQL = """
WITH candidates AS (
    SELECT h.user_id, s.similar_product_id AS product_id, {score} AS score
    FROM bench_history AS h
    JOIN bench_similar AS s USING (product_id)
    JOIN bench_products AS pi ON pi.product_id = h.product_id
    LEFT JOIN bench_products AS pj ON pj.product_id = s.similar_product_id
    JOIN bench_anchor_totals AS a ON a.product_id = h.product_id
    WHERE {anchors}
    GROUP BY h.user_id, s.similar_product_id
),
fresh AS (
    SELECT * FROM candidates
    SEMI JOIN bench_current USING (product_id)
    ANTI JOIN bench_history USING (user_id, product_id)
)
SELECT user_id, product_id, row_number() OVER (PARTITION BY user_id ORDER BY score DESC, product_id) AS rank
FROM fresh QUALIFY rank <= {k}
"""


def report_inputs(locations: LakeLocations, partition: str) -> ReportInputs:
    """The lake files `ranking_report` reads for `partition` (its declared inputs, by layout)."""

    def uri(zone: str, table: str) -> str:
        return locations.partition_uri(zone, table, partition)

    lines = [*locations.partitions_before("clean", "clean_order_products", partition).values()]
    return ReportInputs(
        training_set=uri("curated", "training_set"),
        xgboost_model=locations.model_uri("xgboost_model", partition),
        user_embeddings=uri("curated", "user_embeddings"),
        product_embeddings=uri("curated", "product_embeddings"),
        user_features=uri("curated", "user_features"),
        product_features=uri("curated", "product_features"),
        user_product_features=uri("curated", "user_product_features"),
        clean_products=uri("clean", "clean_products"),
        clean_aisles=uri("clean", "clean_aisles"),
        clean_departments=uri("clean", "clean_departments"),
        clean_order_products=[*lines, uri("clean", "clean_order_products")],
        similar_item_counts=uri("consumption", "similar_item_counts"),
    )


def prepare(
    conn: duckdb.DuckDBPyConnection, inputs: ReportInputs, scratch: Path
) -> tuple[pd.DataFrame, list]:
    """The report's held-out users, their history and co-purchase lists as bench_* tables; returns
    their truth (user_id, product_id of the target orders) and the fixed lists to compare with
    (name, lists, why): the served lists, the popular baseline, GraphSAGE's nearest products."""
    training = feature_source(conn, inputs.training_set)
    users = conn.sql(f"SELECT DISTINCT user_id FROM {training} ORDER BY 1").fetchnumpy()["user_id"]
    held_out = validation_users(users, read_model_card(inputs.xgboost_model)).astype(np.int64)
    conn.register("bench_held_out_df", pd.DataFrame({"user_id": held_out}))
    conn.execute(
        f"""
        CREATE TEMP TABLE bench_targets AS SELECT DISTINCT user_id, order_id FROM {training}
        SEMI JOIN bench_held_out_df USING (user_id);
        CREATE TEMP TABLE bench_history AS
        SELECT user_id, product_id, up_orders, up_in_last_1, up_in_last_3
        FROM {feature_source(conn, inputs.user_product_features)}
        SEMI JOIN bench_held_out_df USING (user_id) WHERE framing = 'target';
        CREATE TEMP TABLE bench_products AS SELECT product_id, p_orders
        FROM {feature_source(conn, inputs.product_features)} WHERE framing = 'target';
        CREATE TEMP TABLE bench_current AS SELECT DISTINCT product_id
        FROM read_parquet('{inputs.clean_products}', hive_partitioning = false) WHERE is_current;
        """
    )
    truth = conn.execute(
        "SELECT DISTINCT t.user_id, l.product_id FROM bench_targets AS t "
        "JOIN read_parquet($lines, hive_partitioning = false) AS l USING (order_id)",
        {"lines": list(inputs.clean_order_products)},
    ).df()
    similar = target_similar_items(conn, inputs, scratch)
    conn.execute(
        f"""
        CREATE TEMP TABLE bench_similar AS SELECT product_id, similar_product_id, score, lift, together
        FROM read_parquet('{similar.path}', hive_partitioning = false);
        CREATE TEMP TABLE bench_anchor_totals AS SELECT product_id, sum(score) AS total
        FROM bench_similar GROUP BY 1;
        """
    )
    history = conn.sql("SELECT user_id, product_id FROM bench_history").df()
    current = set(conn.sql("SELECT product_id FROM bench_current").fetchnumpy()["product_id"].tolist())
    sql, params = with_feature_tables(
        conn,
        TRAINING_HISTORY_SQL,
        {"training_set": inputs.training_set, "users": held_out.tolist()},
        "training_set",
    )
    training_history = conn.execute(sql, params).df()
    popular = popular_explore_baseline(
        training_history.loc[training_history["product_id"].isin(current)], history, held_out, EXPLORE_K
    )
    served, nearest = held_out_explore(conn, inputs, held_out, scratch / "report")
    served_lists, nearest_lists = (
        conn.execute(
            "SELECT user_id, product_id, explore_rank::INTEGER AS rank "
            "FROM read_parquet(?, hive_partitioning = false)",
            [str(staged.path)],
        ).df()
        for staged in (served, nearest)
    )
    baselines = [
        ("served, as the ranking report runs it", served_lists, "the same query with the GraphSAGE fill"),
        ("baseline: most popular never bought", popular, "what the check compares with"),
        ("graphsage nearest products", nearest_lists, "the fallback for short histories"),
    ]
    return truth, baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="an INSTAREC_HOME where ranking_report has run")
    parser.add_argument("--partition", required=True, help="the batch whose report inputs to use")
    parser.add_argument("--append-results", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    locations = LakeLocations.from_env(args.home)
    inputs = report_inputs(locations, args.partition)
    rows = []
    with tempfile.TemporaryDirectory() as scratch, duckdb.connect() as conn:
        truth, baselines = prepare(conn, inputs, Path(scratch))
        users = truth["user_id"].nunique()
        for name, score, anchors, why in METHODS:
            lists = conn.sql(SCORED_SQL.format(score=score, anchors=anchors, k=EXPLORE_K)).df()
            rows.append((explore_metrics(name, lists, truth, EXPLORE_K), why))
        for name, lists, why in baselines:
            rows.append((explore_metrics(name, lists, truth, EXPLORE_K), why))
    seconds = time.perf_counter() - started
    lines = [
        f"Command: `.venv/bin/python bench/bench_explore_scoring.py --home {args.home} "
        f"--partition {args.partition}`; {users:,} held-out users, k = {EXPLORE_K}, {seconds:.0f} s",
        "",
        "| method | why | users shown | explore hit rate@2 | distinct items per user | top item share |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {m.method} | {why} | {m.users_shown:,} | {m.hit_rate:.4f} | {m.distinct_per_user:.4f} "
            f"| {m.top_item_share:.4f} |"
            for m, why in rows
        ),
    ]
    print("\n".join(lines))
    if args.append_results:
        section = [
            f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — explore scoring methods, batch "
            f"{args.partition}",
            "",
            *machine_table(machine_description()),
            "",
            *lines,
            "",
        ]
        append_results("\n".join(section))


if __name__ == "__main__":
    main()
