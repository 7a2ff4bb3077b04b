"""Benchmark a weekly increment against the first load, in one run on one machine.

Generates two batches (`instarec generate --batches 2`: a full snapshot, then a weekly increment of new
orders of existing users, a few new users and catalog changes) and runs, each as one fresh
`instarec materialize` child process on the same INSTAREC_HOME:

1. the first load (batch 1, every asset);
2. the increment (batch 2) under the default retrain policy (models kept unless due);
3. the same increment again with a retrain due (`INSTAREC_RETRAIN_EVERY_BATCHES=1`).

Each run's wall time, CPU and peak RSS come from bench_lake's `run_stage`, per-step seconds from the run's
event log (bench_pipeline's `run_details`). Target (issue 10): the increment lands and is served in at most
10% of the first load's wall time measured in the same run.

Usage: `.venv/bin/python bench/bench_incremental.py [--users 206209] [--append-results]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_lake
from bench_lake import (
    append_results,
    child_env,
    gib,
    instarec_command,
    machine_description,
    run_stage,
    verdict,
)
from bench_pipeline import STAGES, run_details, stage_seconds

TARGET_SHARE = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=bench_lake.FULL_USERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=str(bench_lake.BENCH_DIR / "data"))
    parser.add_argument("--append-results", action="store_true")
    parser.add_argument("--duckdb-memory-limit")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(args.work_dir).resolve()
    data_dir = work_dir / f"incremental_data_{args.users}_{args.seed}"
    home = work_dir / "incremental_home"
    env = child_env(args)
    instarec = instarec_command()
    if not data_dir.exists():
        command = [*instarec, "generate", "--out", str(data_dir), "--users", str(args.users)]
        run_stage("generate", [*command, "--seed", str(args.seed), "--batches", "2"], env)
    batches = sorted(path for path in data_dir.iterdir() if path.is_dir())
    if home.exists():
        shutil.rmtree(home)

    runs = []
    plan = [
        ("first load", batches[0], {}),
        ("increment, models kept", batches[1], {}),
        ("increment, retrain due", batches[1], {"INSTAREC_RETRAIN_EVERY_BATCHES": "1"}),
    ]
    for label, batch, extra_env in plan:
        print(f"bench: {label}: {batch.name}", flush=True)
        command = [*instarec, "materialize", "--landing", str(batch), "--partition", batch.name]
        stage = run_stage(label, [*command, "--home", str(home)], {**env, **extra_env}, check=False)
        runs.append((label, batch.name, stage, run_details(home)))
        if stage.returncode != 0:
            sys.stderr.write(stage.stderr[-4000:])
            break

    section = render(args, machine_description(), runs)
    (work_dir / "incremental_last_run.json").write_text(
        json.dumps(
            [{"label": label, "batch": batch, "details": details} for label, batch, _, details in runs],
            default=str,
        )
    )
    print(section)
    if args.append_results:
        append_results(section)
    return 0 if all(stage.returncode == 0 for _, _, stage, _ in runs) else 1


def render(args: argparse.Namespace, machine: dict, runs: list) -> str:
    first = runs[0][2]
    lines = [
        f"## {machine['date']} — increment against first load, {args.users:,} users, seed {args.seed}",
        "",
        f"Command: `.venv/bin/python bench/bench_incremental.py {' '.join(args.argv)}`",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key.replace('_', ' ')} | {value} |" for key, value in machine.items()),
        "",
        "| run | batch | exit | wall | share of first load | peak RSS | CPU s | other CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, batch, stage, _ in runs:
        share = stage.wall_seconds / first.wall_seconds if first.wall_seconds else 0.0
        lines.append(
            f"| {label} | {batch} | {stage.returncode} | {stage.wall_seconds:.1f} s | {100 * share:.1f} % "
            f"| {gib(stage.peak_bytes)} | {stage.user_seconds + stage.system_seconds:.0f} "
            f"| {stage.other_cpu_seconds:.0f} |"
        )
    if len(runs) > 1:
        kept = runs[1][2]
        ok = kept.returncode == 0 and kept.wall_seconds <= TARGET_SHARE * first.wall_seconds
        lines += [
            "",
            f"Target: the increment (models kept) in at most {100 * TARGET_SHARE:.0f}% of the first load's wall "
            f"time: {verdict(ok)}.",
        ]
    lines += ["", "| stage | " + " | ".join(label for label, *_ in runs) + " |", "|---|" + "---|" * len(runs)]
    totals = [stage_seconds(details["steps"], {}) for *_, details in runs]
    for label, _ in STAGES:
        lines.append(f"| {label} | " + " | ".join(f"{total.get(label, 0.0):.1f}" for total in totals) + " |")
    loaded = [stage for _, _, stage, _ in runs if stage.other_cpu_seconds / max(stage.wall_seconds, 1) > 0.25]
    if loaded:
        lines += [
            "",
            "**Other processes competed for the CPU during some runs; their wall times are inflated.**",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
