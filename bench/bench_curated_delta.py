"""Benchmark the curated feature update of one increment: whole tables (a base) against deltas.

Runs `update_features` on a stored lake (the first batch's curated tables and both batches' clean
zone, e.g. what `bench_incremental.py` and `instarec materialize --through clean` leave in a home)
alternately without and with a delta chain, `--repeat` times each, every run in a fresh DuckDB
connection with the pipeline's memory limit, and prints the seconds per step, the bytes written, and
what a reader pays to read the whole table back (`count(*)` and a full scan of the inference set's
feature columns: a plain file against the resolved chain).

Usage: `.venv/bin/python bench/bench_curated_delta.py --home HOME --previous 2025-01-06 --batch 2025-01-13`
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from instarec_assets.features import PreviousFeatures
from instarec_assets.features.columns import FEATURE_COLUMNS
from instarec_assets.features.incremental import DeltaChain, update_features
from instarec_assets.lake.feature_delta import feature_source
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.privacy.clean_zone import clean_zone_as_of

TABLES = ("user_features", "product_features", "user_product_features", "training_set", "inference_set")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--previous", required=True)
    parser.add_argument("--batch", required=True)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    return parser.parse_args()


def run(args: argparse.Namespace, delta: bool, scratch: Path) -> dict:
    locations = LakeLocations(env="local", home=args.home)
    snapshot, _ = clean_zone_as_of(locations, args.batch)
    previous_products = clean_zone_as_of(locations, args.previous)[0].products
    uris = {name: locations.partition_uri("curated", name, args.previous) for name in TABLES}
    previous = PreviousFeatures(**uris, products=previous_products)
    chain = DeltaChain(args.batch, (args.previous,)) if delta else None
    out = scratch / ("delta" if delta else "whole")
    with duckdb.connect(config={"memory_limit": args.memory_limit}) as conn:
        started = time.perf_counter()
        result = update_features(
            conn, snapshot, previous, [snapshot.orders[-1]], [snapshot.order_products[-1]], out, delta=chain
        )
        seconds = time.perf_counter() - started
    written = sum(getattr(result.tables, name).path.stat().st_size for name in TABLES)
    rows = sum(getattr(result.tables, name).row_count for name in TABLES)
    return {
        "mode": "delta" if delta else "whole",
        "seconds": seconds,
        "steps": result.seconds,
        "bytes": written,
        "rows": rows,
        "affected": result.affected_users,
        "touched": result.touched_products,
        "tables": result.tables,
    }


def read_cost(args: argparse.Namespace, tables, delta: bool) -> tuple[float, float]:
    """(count seconds, feature scan seconds) of the inference set as a reader gets it."""
    locations = LakeLocations(env="local", home=args.home)

    def locate(table: str, batch: str) -> str:
        if batch == args.batch:
            return str(getattr(tables, table).path)
        return locations.partition_uri("curated", table, batch)

    with duckdb.connect(config={"memory_limit": args.memory_limit}) as conn:
        source = feature_source(conn, tables.inference_set.path, locate if delta else None)
        started = time.perf_counter()
        conn.execute(f"SELECT count(*) FROM {source}").fetchall()
        counted = time.perf_counter() - started
        columns = ", ".join(f'sum("{name}")' for name in FEATURE_COLUMNS)
        started = time.perf_counter()
        conn.execute(f"SELECT {columns} FROM {source}").fetchall()
        return counted, time.perf_counter() - started


def main() -> None:
    args = parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-curated-delta-"))
    results = []
    try:
        for _ in range(args.repeat):
            for delta in (False, True):
                result = run(args, delta, scratch / str(len(results)))
                result["read"] = read_cost(args, result["tables"], delta)
                results.append(result)
                print(
                    f"{result['mode']:5}  {result['seconds']:7.2f} s  written {result['bytes'] / 2**20:7.1f} MiB"
                    f"  {result['rows']:>10,} rows  read count {result['read'][0]:.2f} s"
                    f"  scan {result['read'][1]:.2f} s  steps {result['steps']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"affected users {results[0]['affected']:,}, touched products {results[0]['touched']:,}; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; "
        f"load average {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
