"""Similar items' embedding side at the full catalogue's size: the brute-force top-k cosine and the blend.

Random 64-d embeddings for 49,688 products (the Instacart catalogue), unit-normalised as the asset
loads them; times `embedding_neighbours` (every product's 20 nearest others, blocks of 1,024 rows
against all) and one `blend` of those neighbours with 100 random co-occurrence candidates per
product (the asset's candidate cap), and reports the peak RSS.

    .venv/bin/python bench/bench_similar_items.py
    .venv/bin/python bench/bench_similar_items.py --products 10000 --dim 32   # quick
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from instarec_assets.consumption.similar_items import (
    COOCCURRENCE_CANDIDATES,
    SIMILAR_TOP_K,
    blend,
    embedding_neighbours,
)
from instarec_assets.ml.graphsage.explore import EmbeddingTable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=49_688)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    ids = np.arange(1, args.products + 1)
    table = EmbeddingTable.from_vectors(ids, rng.normal(size=(args.products, args.dim)).astype(np.float32))

    started = time.perf_counter()
    neighbours = embedding_neighbours(table, SIMILAR_TOP_K)
    neighbour_seconds = time.perf_counter() - started

    count = args.products * COOCCURRENCE_CANDIDATES
    left = np.repeat(ids, COOCCURRENCE_CANDIDATES)
    right = rng.integers(1, args.products + 1, count)
    right = np.where(right == left, right % args.products + 1, right)
    keys = np.sort((left << 32) | right)
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
    cooccurrence = {
        "product_id": keys >> 32,
        "similar_product_id": keys & 0xFFFFFFFF,
        "together": rng.integers(3, 50, keys.size),
        "cooccurrence": rng.random(keys.size),
        "lift": rng.random(keys.size) * 10,
    }
    started = time.perf_counter()
    ranked = blend(cooccurrence, 0.2, SIMILAR_TOP_K, table, neighbours)
    blend_seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.products} products x {args.dim}-d, {os.cpu_count()} cores: top-{SIMILAR_TOP_K} cosine "
        f"neighbours {neighbour_seconds:.1f} s ({neighbours[0].size} pairs); blend of {keys.size} "
        f"co-occurrence candidates + neighbours {blend_seconds:.1f} s ({len(ranked)} rows); "
        f"peak RSS {peak_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
