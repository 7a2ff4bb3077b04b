"""Benchmark the two engines on one landing: raw + clean + features on DuckDB, then on local Spark.

One run, both engines, the same generated batch (default 40,000 users, one batch), each engine in its
own home and its own child process started through the `instarec` console script:

1. generate  `instarec generate --out <work-dir>/data --users N --seed S --batches 1` (reused with --keep)
2. duckdb    `instarec materialize --landing <batch> --partition <date> --home <work-dir>/home-duckdb
             --through curated --engine duckdb`
3. spark     the same with `--engine spark` and its own home: every clean step and the feature build
             run as Spark jobs (local[2]) launched through Dagster Pipes

For each engine: wall time, CPU time, peak RSS (the kernel's high-water mark of the child and the
sampled RSS of its whole process tree, which includes Spark's JVMs), the CPU the rest of the machine
used meanwhile, and per-step seconds from the run's event log (raw, clean, features). Then the two
lakes' curated tables are compared (row counts; every value, floats within 1e-9 relative).

Usage: `.venv/bin/python bench/bench_engines.py [--users 40000] [--keep] [--append-results]`.
See bench/README.md ("Engines").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import duckdb

from instarec_assets.lake.locations import LakeLocations

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lake import (
    GENERATED_MANIFEST,
    REPO_ROOT,
    Generated,
    StageRun,
    append_results,
    child_env,
    gib,
    instarec_command,
    load_footer,
    machine_description,
    machine_table,
    materialize_command,
    parse_generate_output,
    reusable,
    run_stage,
    step_seconds_from_instance,
)

ENGINES = ("duckdb", "spark")
CURATED_TABLES = (
    "user_features",
    "product_features",
    "user_product_features",
    "training_set",
    "inference_set",
)


def generate(instarec: list[str], env: dict[str, str], data_dir: Path, users: int, seed: int, keep: bool):
    """The landing batch: reused when --keep finds one with the same users and seed."""
    if keep and (found := reusable(data_dir, users, seed)):
        print(f"bench: reusing {found.folder}", flush=True)
        return found, None
    shutil.rmtree(data_dir, ignore_errors=True)
    command = [*instarec, "generate", "--out", str(data_dir), "--users", str(users), "--seed", str(seed)]
    stage = run_stage("generate", [*command, "--batches", "1"], env)
    generated = parse_generate_output(stage.output(), users, seed)
    (data_dir / GENERATED_MANIFEST).write_text(json.dumps(asdict(generated)))
    return generated, stage


def run_engine(instarec: list[str], env: dict[str, str], generated: Generated, home: Path, engine: str):
    """raw + clean + features for the batch on one engine, in a fresh home."""
    shutil.rmtree(home, ignore_errors=True)
    command = [*materialize_command(instarec, generated, home), "--through", "curated", "--engine", engine]
    stage = run_stage(engine, command, env)
    return stage, step_seconds_from_instance(home)


def step_groups(steps: dict[str, float]) -> dict[str, float]:
    """Seconds of the raw steps, the clean steps, the feature step and the rest (checks)."""
    raw = sum(seconds for key, seconds in steps.items() if key.startswith("raw_"))
    clean = sum(
        seconds for key, seconds in steps.items() if key.startswith("clean_") and key.endswith("_step")
    )
    features = sum(seconds for key, seconds in steps.items() if key.startswith("curated_features_step"))
    return {
        "raw": raw,
        "clean": clean,
        "features": features,
        "other": sum(steps.values()) - raw - clean - features,
    }


def compare_lakes(homes: dict[str, Path], partition: str) -> dict[str, str]:
    """Per curated table: `same (N rows)` or what differs first."""
    verdicts = {}
    with duckdb.connect() as conn:
        for table in CURATED_TABLES:
            tables = {}
            for engine, home in homes.items():
                uri = LakeLocations(env="local", home=str(home)).partition_uri("curated", table, partition)
                relation = conn.read_parquet(uri, hive_partitioning=False)
                tables[engine] = (relation.columns, relation.types, relation.order("ALL").fetchall())
            (_, types, left), (_, other_types, right) = tables["duckdb"], tables["spark"]
            if types != other_types or len(left) != len(right):
                verdicts[table] = (
                    f"differ: {len(left)} rows vs {len(right)}, types equal: {types == other_types}"
                )
                continue
            differing = sum(
                1
                for row, other in zip(left, right, strict=True)
                for a, b in zip(row, other, strict=True)
                if not (
                    a == b
                    or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9))
                )
            )
            verdicts[table] = f"same ({len(left):,} rows)" if not differing else f"{differing} values differ"
    return verdicts


def render(
    args, generated: Generated, runs: dict[str, tuple[StageRun, dict[str, float]]], parity: dict[str, str]
) -> str:
    now = dt.datetime.now(dt.UTC)
    lines = [
        f"## {now:%Y-%m-%d %H:%M} UTC — engines: raw + clean + features, DuckDB vs local Spark, "
        f"{generated.users:,} users, seed {generated.seed}",
        "",
        f"Command: `.venv/bin/python bench/bench_engines.py --users {args.users} --seed {args.seed}"
        f"{' --keep' if args.keep else ''}` (one batch, {generated.order_lines:,} order lines; each engine "
        "in its own home and child process, `instarec materialize --through curated --engine ENGINE`).",
        "",
        "| engine | wall | raw | clean | features | other steps | CPU (user+sys) | order lines/s | peak RSS (tree) | other processes' CPU | load at start |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, (stage, steps) in runs.items():
        groups = step_groups(steps)
        lines.append(
            f"| {engine} | {stage.wall_seconds:.1f} s | {groups['raw']:.1f} s | {groups['clean']:.1f} s | "
            f"{groups['features']:.1f} s | {groups['other']:.1f} s | "
            f"{stage.user_seconds + stage.system_seconds:.1f} s | {generated.order_lines / stage.wall_seconds:,.0f} | "
            f"{gib(stage.peak_bytes)} | {stage.other_cpu_seconds:.1f} s | {stage.load_before:.2f} |"
        )
    lines += load_footer(stage for stage, _ in runs.values())
    lines += [
        "",
        "Parity of the curated tables (Spark's lake against DuckDB's; floats within 1e-9 relative):",
        "",
    ]
    lines += [f"- `{table}`: {verdict}" for table, verdict in parity.items()]
    lines += ["", *machine_table(machine_description()), ""]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench" / "data-engines")
    parser.add_argument(
        "--keep", action="store_true", help="reuse a generated batch with the same users and seed"
    )
    parser.add_argument(
        "--append-results", action="store_true", help="append the results to bench/RESULTS.md"
    )
    parser.add_argument("--duckdb-memory-limit", default="", help="INSTAREC_DUCKDB_MEMORY_LIMIT for the runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if subprocess.run(["java", "-version"], capture_output=True).returncode != 0:
        raise SystemExit("bench: the spark engine needs a Java 17 runtime (Debian: openjdk-17-jre-headless)")
    instarec, env = instarec_command(), child_env(args)
    generated, _ = generate(instarec, env, args.work_dir / "data", args.users, args.seed, args.keep)
    runs = {
        engine: run_engine(instarec, env, generated, args.work_dir / f"home-{engine}", engine)
        for engine in ENGINES
    }
    parity = compare_lakes(
        {engine: args.work_dir / f"home-{engine}" for engine in ENGINES}, generated.partition
    )
    section = render(args, generated, runs, parity)
    print(section)
    if args.append_results:
        append_results(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
