"""Benchmark one landing batch run three ways: the CLI, and a UI/sensor-style run with each step's process.

A run started from the Dagster UI or by the landing sensor is executed by a run worker with the job's
executor: the multiprocess executor, one child process per step. This measures, for the same batch on
fresh homes:

1. `cli`: `instarec materialize` (the job in-process, what the CLI and `make demo` do);
2. `spawn`: `dagster job execute` on `run_paths_spawn.py`, the same definitions with each step a spawned
   interpreter importing the pipeline (how UI and sensor runs went before the code location set its executor);
3. `forkserver`: `dagster job execute` on `instarec_assets` (steps forked from a server that has preloaded
   `instarec_assets.definitions`: how UI and sensor runs go now).

`dagster job execute` runs the job in its own process with the job's executor, as the run worker that the
UI's run launcher starts does (that worker is `dagster api execute_run`, launched the same way).

Usage: `.venv/bin/python bench/bench_run_paths.py [--users 2000] [--append-results]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lake, bench_pipeline

import bench_lake
from bench_lake import append_results, child_env, gib, instarec_command, machine_description, run_stage
from bench_pipeline import run_details

BENCH_DIR = Path(__file__).resolve().parent
TARGET_RATIO = 1.25  # a UI run within 25% of the CLI's wall time counts as "as fast as the CLI"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=str(bench_lake.BENCH_DIR / "data"))
    parser.add_argument("--append-results", action="store_true")
    parser.add_argument("--duckdb-memory-limit")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def dagster_command() -> list[str]:
    return [str(Path(sys.executable).parent / "dagster")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(args.work_dir).resolve()
    data_dir = work_dir / f"run_paths_data_{args.users}_{args.seed}"
    env = child_env(args)
    instarec = instarec_command()
    if not data_dir.exists():
        command = [*instarec, "generate", "--out", str(data_dir), "--users", str(args.users)]
        run_stage("generate", [*command, "--seed", str(args.seed), "--batches", "1"], env)
    batch = sorted(path for path in data_dir.iterdir() if path.is_dir())[0]

    runs = []
    for path in ("cli", "spawn", "forkserver"):
        home = work_dir / f"run_paths_home_{path}"
        if home.exists():
            shutil.rmtree(home)
        run_env = {**env, "INSTAREC_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
        if path == "cli":
            command = [*instarec, "materialize", "--landing", str(batch), "--partition", batch.name]
        else:
            # Land and register the batch as the sensor would (the CLI with --through raw does both and
            # the raw step), then run the full job the way a run worker does.
            prepare = [*instarec, "materialize", "--landing", str(batch), "--partition", batch.name]
            run_stage(f"{path} landing", [*prepare, "--through", "raw"], run_env)
            # spawn: this folder's run_paths_spawn.py, the same definitions with every step spawned.
            target = (
                ["-f", str(BENCH_DIR / "run_paths_spawn.py")]
                if path == "spawn"
                else ["-m", "instarec_assets"]
            )
            tags = json.dumps({"dagster/partition": batch.name})
            command = [*dagster_command(), "job", "execute", *target, "-a", "defs", "-j", "landing_to_lake"]
            command += ["--tags", tags]
        print(f"bench: {path}: {batch.name}", flush=True)
        stage = run_stage(path, command, run_env, check=False)
        runs.append((path, stage, run_details(home)))
        if stage.returncode != 0:
            sys.stderr.write(stage.stderr[-4000:])

    section = render(args, machine_description(), runs)
    print(section)
    if args.append_results:
        append_results(section)
    return 0 if all(stage.returncode == 0 for _, stage, _ in runs) else 1


def render(args: argparse.Namespace, machine: dict, runs: list) -> str:
    cli = runs[0][1]
    lines = [
        f"## {machine['date']} — one batch from the CLI and as a UI/sensor run, {args.users:,} users",
        "",
        f"Command: `.venv/bin/python bench/bench_run_paths.py {' '.join(args.argv)}`",
        "",
        *bench_lake.machine_table(machine),
        "",
        "| path | exit | wall | vs CLI | sum of step seconds | peak RSS (process tree) | CPU s | other CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path, stage, details in runs:
        ratio = stage.wall_seconds / cli.wall_seconds if cli.wall_seconds else 0.0
        lines.append(
            f"| {path} | {stage.returncode} | {stage.wall_seconds:.1f} s | {ratio:.2f}x "
            f"| {sum(details['steps'].values()):.1f} s | {gib(stage.peak_bytes)} "
            f"| {stage.user_seconds + stage.system_seconds:.0f} | {stage.other_cpu_seconds:.0f} |"
        )
    forkserver = runs[-1][1]
    ok = forkserver.returncode == 0 and forkserver.wall_seconds <= TARGET_RATIO * cli.wall_seconds
    lines += [
        "",
        "The `spawn` and `forkserver` rows exclude landing the batch and its raw step (run beforehand, as the "
        "sensor's landing would be); the job then skips nothing: it rebuilds raw too.",
        f"Target: a UI/sensor run within {TARGET_RATIO:.2f}x the CLI's wall time: {bench_lake.verdict(ok)}.",
    ]
    lines += bench_lake.load_footer(stage for _, stage, _ in runs)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
