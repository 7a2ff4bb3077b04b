"""Benchmark the Spark engine's one-file output: a sorted table written by `coalesce(1)` (the old
path: the sort itself runs in one task) against the same table sorted in parallel into part files
and joined by `merge_parts` (parquet-mr's ParquetFileWriter.appendFile, row groups copied as bytes).

One run, both ways in each of `--rounds` rounds, on one local-mode session (local[2]) and one input parquet file (e.g. a lake's
`clean_order_products` partition), sorted by the given columns:

1. coalesce  `frame.orderBy(...).coalesce(1).write.parquet(...)`, the one part renamed
2. parts     `frame.orderBy(...).write.parquet(...)` (the session's shuffle partitions), then
             `merge_parts` into one file; the merge is timed on its own (MB/s of the output)

Then DuckDB checks that both files hold the same rows in the same order. Peak RSS is this process's
and its largest child's (the JVM) high-water mark.

Usage: `.venv/bin/python bench/bench_spark_merge.py FILE --order-by order_id,product_id
[--shuffle-partitions 4] [--rounds 2] [--work-dir DIR]`. See bench/README.md ("Engines").
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb


def _gib(kib: int) -> float:
    return kib / 1024 / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="the parquet file to write back sorted")
    parser.add_argument("--order-by", required=True, help="comma-separated sort columns")
    parser.add_argument("--shuffle-partitions", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=2, help="both ways per round (the first warms the JVM)")
    args = parser.parse_args()
    if not args.file.is_file():
        sys.exit(f"bench_spark_merge: {args.file} is not a file")

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from instarec_assets.lake.spark_connection import merge_parts, spark_session

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_spark_merge_"))
    work.mkdir(parents=True, exist_ok=True)
    spark = spark_session(app_name="bench-spark-merge", jvm_log=work / "jvm.log")
    spark.conf.set("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
    order = [column.strip() for column in args.order_by.split(",")]
    frame = spark.read.parquet(f"file://{args.file.resolve()}").orderBy(*order)
    input_mb = args.file.stat().st_size / 1e6

    def timed(label: str, action) -> float:
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
        print(f"{label}: {seconds:.1f} s", flush=True)
        return seconds

    one = work / "coalesce.parquet"
    parts = work / "parts.parquet"
    rounds = []  # (coalesce s, parallel write s, merge s, parts) per round; the first warms the JVM
    for _ in range(args.rounds):
        coalesce_seconds = timed(
            "coalesce(1) sorted write + rename",
            lambda: (
                frame.coalesce(1).write.mode("overwrite").parquet(f"file://{work}/coalesce.spark"),
                merge_parts(spark, f"file://{work}/coalesce.spark", f"file://{one}"),
            ),
        )
        write_seconds = timed(
            "parallel sorted write",
            lambda: frame.write.mode("overwrite").parquet(f"file://{work}/parts.spark"),
        )
        written = len(list((work / "parts.spark").glob("part-*.parquet")))
        merge_seconds = timed(
            "merge_parts", lambda: merge_parts(spark, f"file://{work}/parts.spark", f"file://{parts}")
        )
        rounds.append((coalesce_seconds, write_seconds, merge_seconds, written))
    spark.stop()

    with duckdb.connect() as duck:
        # file_row_number: each row's position in its file, so equal sets mean the same order too.
        same = duck.execute(
            "SELECT (SELECT count(*) FROM read_parquet($a)) = (SELECT count(*) FROM read_parquet($b)) "
            "AND NOT EXISTS (SELECT * FROM read_parquet($a, file_row_number = true) "
            "EXCEPT SELECT * FROM read_parquet($b, file_row_number = true))",
            {"a": str(one), "b": str(parts)},
        ).fetchone()[0]
        (rows,) = duck.execute("SELECT count(*) FROM read_parquet($a)", {"a": str(one)}).fetchone()
    output_mb = parts.stat().st_size / 1e6
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"input: {args.file} ({input_mb:.1f} MB, {rows:,} rows), sorted by {', '.join(order)}")
    print("| round | way | wall | rows/s |")
    print("|---|---|---|---|")
    for number, (coalesce_seconds, write_seconds, merge_seconds, written) in enumerate(rounds, 1):
        total = write_seconds + merge_seconds
        print(f"| {number} | coalesce(1) | {coalesce_seconds:.1f} s | {rows / coalesce_seconds:,.0f} |")
        print(
            f"| {number} | {written} parts + merge | {total:.1f} s ({write_seconds:.1f} + {merge_seconds:.2f}) "
            f"| {rows / total:,.0f} |"
        )
    merge_seconds = rounds[-1][2]
    print(f"last merge: {output_mb:.1f} MB in {merge_seconds:.2f} s = {output_mb / merge_seconds:.0f} MB/s")
    print(
        f"same rows in the same order: {same}; peak RSS {_gib(peak):.2f} GiB (largest of this process, the JVM)"
    )
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    if not same:
        sys.exit("bench_spark_merge: the two files differ")


if __name__ == "__main__":
    main()
