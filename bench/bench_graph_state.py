#!/usr/bin/env python
"""Usage: bench_graph_state.py HOME (a lake whose clean zone holds batches 2025-01-06 and 2025-01-13).

Graph build of batch 2 (20,000 users, 2% increment): two build_graph calls (before) against
build_state for batch 1 then state_for_batch from it (after); checks the graphs are equal."""

import sys
import time
from pathlib import Path

import duckdb

from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.graphsage import build_graph
from instarec_assets.ml.graphsage.graph_state import build_state, state_for_batch

loc = LakeLocations(home=sys.argv[1])


def snap(batch):
    def u(t):
        return [v for k, v in loc.partitions("clean", t).items() if k <= batch]

    return CleanSnapshot(
        u("clean_orders"), u("clean_order_products"), loc.partitions("clean", "clean_products")[batch], "", ""
    )


conn = duckdb.connect()
conn.execute("SET threads = 1")
s1, s2 = snap("2025-01-06"), snap("2025-01-13")
folder = Path("/tmp/graphinc-micro/state-2025-01-06")
build_state(conn, s1).state.write(folder)
for rep in range(2):
    t = time.perf_counter()
    old = {f: build_graph(conn, s2, f) for f in ("target", "serving")}
    before = time.perf_counter() - t
    t = time.perf_counter()
    full = build_state(conn, s2)
    new_full = full.state.graphs(conn, s2.products)
    full_s = time.perf_counter() - t
    t = time.perf_counter()
    upd, why = state_for_batch(conn, s2, ("2025-01-06", folder))
    new = upd.state.graphs(conn, s2.products)
    upd.state.write(Path("/tmp/graphinc-micro/state-2025-01-13"))
    after = time.perf_counter() - t
    for f in old:
        assert old[f].fingerprint() == new[f].fingerprint() == new_full[f].fingerprint(), f
    print(
        f"rep {rep}: two build_graph {before:.2f} s | build_state+graphs {full_s:.2f} s | update from stored state + graphs + write {after:.2f} s ({upd.seconds:.2f} s update) | {why} | edges {old['serving'].n_edges:,}"
    )
