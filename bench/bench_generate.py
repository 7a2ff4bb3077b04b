"""Time full-size synthetic data generation and report rows/s and peak memory.

Usage: python bench/bench_generate.py [--users 206209] [--seed 0] [--batches 1] [--out DIR] [--keep]
Without --out the files go to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from instarec_assets.generate import generate_dataset

REAL_USERS = 206_209


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=REAL_USERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    args = parser.parse_args(argv)

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="instarec-bench-"))
    started = time.perf_counter()
    summary = generate_dataset(out_dir, users=args.users, seed=args.seed, batches=args.batches)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_gib = usage.ru_maxrss / 1024**2
    rows = sum(sum(batch.rows.values()) for batch in summary.batches)
    size_mib = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file()) / 1024**2

    print(summary)
    print(f"users={args.users:,} batches={args.batches} seed={args.seed}")
    print(f"wall time: {elapsed:.1f} s (CPU {usage.ru_utime + usage.ru_stime:.1f} s, whole process)")
    print(f"rows written: {rows:,} ({rows / elapsed:,.0f} rows/s), {size_mib:,.0f} MiB on disk")
    print(f"peak RSS: {peak_gib:.2f} GiB")
    if args.out is None and not args.keep:
        shutil.rmtree(out_dir)
    elif args.out is None:
        print(f"output kept in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
