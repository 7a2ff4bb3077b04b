"""Benchmark a weekly increment against the first load, in one run on one machine.

Generates two batches (`instarec generate --batches 2`: a full snapshot, then a weekly increment of new
orders of existing users, a few new users and catalog changes), cuts the increment down to
`--increment-share` of the first load's orders (default 0.02, the issue's "about 2% new orders": the
increment's orders of a seeded subset of its users, with every line of those users' orders; `weekly`
keeps the generator's whole week) and runs, each as one fresh `instarec materialize` child process on
the same INSTAREC_HOME:

1. the first load (batch 1, every asset);
2. the increment (batch 2) under the default retrain policy (models kept unless due);
3. the same increment again with a retrain due (`INSTAREC_RETRAIN_EVERY_BATCHES=1`).

Each run's wall time, CPU and peak RSS come from bench_lake's `run_stage`, per-step seconds from the run's
event log (bench_pipeline's `run_details`). Target (issue 10): the increment lands and is served in at most
10% of the first load's wall time measured in the same run.

`--scaling 0.005,0.01,0.02,0.04` replaces runs 2 and 3: after the first load, the kept increment cut to each
share, each on a fresh copy of the first load's INSTAREC_HOME, and a least-squares line through (affected
users, wall): its intercept is the cost an increment pays whatever it brings (process start, Dagster, the
steps whose work follows the catalogue or a fixed sample), its slope the cost per affected user.

Every step the runs executed appears in the per-stage table (the known stages grouped, any other
step by its own name).

Usage: `.venv/bin/python bench/bench_incremental.py [--users 206209] [--increment-share 0.02|weekly]
[--without-retrain-due | --scaling SHARES] [--append-results]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_lake
from bench_lake import (
    append_results,
    child_env,
    gib,
    instarec_command,
    load_footer,
    machine_description,
    machine_table,
    run_stage,
    verdict,
)
from bench_pipeline import STAGES, run_details, stage_of

TARGET_SHARE = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=bench_lake.FULL_USERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--increment-share",
        default="0.02",
        help="the increment's orders as a share of the first load's (default 0.02), or `weekly` for the "
        "generator's whole weekly batch",
    )
    parser.add_argument("--work-dir", default=str(bench_lake.BENCH_DIR / "data"))
    parser.add_argument("--append-results", action="store_true")
    parser.add_argument("--duckdb-memory-limit")
    parser.add_argument(
        "--without-retrain-due",
        action="store_true",
        help="skip the third run (the increment again with a retrain due): the target needs only the first two",
    )
    parser.add_argument(
        "--scaling",
        metavar="SHARES",
        help="comma-separated increment shares, e.g. 0.005,0.01,0.02,0.04: after the first load, the kept "
        "increment at each share on a copy of the first load's home, and the fixed cost and cost per affected "
        "user fitted through them (instead of runs 2 and 3)",
    )
    args = parser.parse_args(argv)
    if args.scaling is not None:
        try:
            args.scaling = sorted({float(part) for part in args.scaling.split(",") if part.strip()})
        except ValueError:
            parser.error(f"--scaling must be comma-separated numbers, got {args.scaling}")
        if len(args.scaling) < 2 or not all(0 < share <= 1 for share in args.scaling):
            parser.error(f"--scaling needs at least two shares in (0, 1], got {args.scaling}")
    if args.increment_share != "weekly":
        share = float(args.increment_share)
        if not 0 < share <= 1:
            parser.error(f"--increment-share must be in (0, 1] or 'weekly', got {args.increment_share}")
        args.increment_share = share
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
    increment = {"share": "weekly"}
    if args.increment_share != "weekly":
        cut_dir = work_dir / f"incremental_data_{args.users}_{args.seed}_share{args.increment_share:g}"
        increment = cut_increment(batches[0], batches[1], cut_dir, args.increment_share, args.seed)
        batches = [cut_dir / batch.name for batch in batches]
    increment.update(count_increment(batches[0], batches[1]))
    if home.exists():
        shutil.rmtree(home)
    if args.scaling is not None:
        return run_scaling(args, batches, data_dir, work_dir, home, env, instarec)

    runs = []
    plan = [
        ("first load", batches[0], {}),
        ("increment, models kept", batches[1], {}),
        ("increment, retrain due", batches[1], {"INSTAREC_RETRAIN_EVERY_BATCHES": "1"}),
    ][: 2 if args.without_retrain_due else 3]
    for label, batch, extra_env in plan:
        print(f"bench: {label}: {batch.name}", flush=True)
        command = [*instarec, "materialize", "--landing", str(batch), "--partition", batch.name]
        stage = run_stage(label, [*command, "--home", str(home)], {**env, **extra_env}, check=False)
        runs.append((label, batch.name, stage, run_details(home)))
        if stage.returncode != 0:
            sys.stderr.write(stage.stderr[-4000:])
            break

    section = render(args, machine_description(), runs, increment)
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


ORDER_FILES = ("order_products__prior.csv", "order_products__train.csv")


def run_scaling(
    args: argparse.Namespace,
    batches: list[Path],
    data_dir: Path,
    work_dir: Path,
    home: Path,
    env: dict[str, str],
    instarec: list[str],
) -> int:
    """The first load, then the kept increment at each of `args.scaling`'s shares on a fresh copy of the
    first load's home; the runs and the fitted line rendered (and appended with --append-results)."""
    generated = sorted(path for path in data_dir.iterdir() if path.is_dir())
    first_home = work_dir / "incremental_home_first_load"
    command = [*instarec, "materialize", "--landing", str(batches[0]), "--partition", batches[0].name]
    print(f"bench: first load: {batches[0].name}", flush=True)
    first = run_stage("first load", [*command, "--home", str(home)], env, check=False)
    runs = [("first load", batches[0].name, first, run_details(home))]
    increments = []
    if first.returncode == 0:
        if first_home.exists():
            shutil.rmtree(first_home)
        home.rename(first_home)
        for share in args.scaling:
            cut_dir = work_dir / f"incremental_data_{args.users}_{args.seed}_share{share:g}"
            increment = cut_increment(generated[0], generated[1], cut_dir, share, args.seed)
            increment.update(count_increment(cut_dir / generated[0].name, cut_dir / generated[1].name))
            if home.exists():
                shutil.rmtree(home)
            shutil.copytree(first_home, home, symlinks=True)
            os.sync()  # so the timed run does not share the disk with the copy's write-back
            label = f"kept increment, share {share:g}"
            print(f"bench: {label}", flush=True)
            batch = cut_dir / generated[1].name
            command = [*instarec, "materialize", "--landing", str(batch), "--partition", batch.name]
            stage = run_stage(label, [*command, "--home", str(home)], env, check=False)
            runs.append((label, batch.name, stage, run_details(home)))
            increments.append(increment | {"affected_users": affected_users(home)})
            if stage.returncode != 0:
                sys.stderr.write(stage.stderr[-4000:])
                break
    section = render_scaling(args, machine_description(), runs, increments)
    print(section)
    if args.append_results:
        append_results(section)
    return 0 if all(stage.returncode == 0 for _, _, stage, _ in runs) else 1


def affected_users(home: Path) -> int | None:
    """The latest `affected_users` materialisation's user count under `home` (None without one)."""
    from dagster import AssetKey, DagsterInstance

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey("affected_users"))
        if event is None or event.asset_materialization is None:
            return None
        users = event.asset_materialization.metadata.get("users")
        return int(users.value) if users is not None else None


def fit_fixed_and_per_user(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of wall seconds against affected users."""
    users = np.array([point[0] for point in points], dtype=np.float64)
    seconds = np.array([point[1] for point in points], dtype=np.float64)
    if users.size < 2 or np.ptp(users) == 0:
        raise ValueError("the fit needs at least two different affected-user counts")
    slope, intercept = np.polyfit(users, seconds, 1)
    return float(intercept), float(slope)


def cut_increment(first: Path, increment: Path, out: Path, share: float, seed: int) -> dict:
    """Write `out`/<first> (hard links) and `out`/<increment> holding the increment's orders of a
    seeded subset of its users, about `share` x the first load's orders, with every line of those
    users' orders (lines of earlier orders that became prior included); catalog files unchanged."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(first, out / first.name, copy_function=os.link)
    target = out / increment.name
    target.mkdir(parents=True)
    first_orders = pd.read_csv(first / "orders.csv", usecols=["order_id", "user_id"])
    orders = pd.read_csv(increment / "orders.csv")
    wanted = share * len(first_orders)
    per_user = orders.groupby("user_id").size()
    users = per_user.index.to_numpy()[np.random.default_rng(seed).permutation(per_user.size)]
    cumulative = per_user.loc[users].cumsum().to_numpy()
    keep = set(users[: int(np.searchsorted(cumulative, wanted)) + 1].tolist())
    orders.loc[orders["user_id"].isin(keep)].to_csv(target / "orders.csv", index=False)
    owner = pd.concat([first_orders, orders[["order_id", "user_id"]]]).drop_duplicates("order_id")
    kept_orders = set(owner.loc[owner["user_id"].isin(keep), "order_id"].tolist())
    for name in ORDER_FILES:
        lines = pd.read_csv(increment / name)
        lines.loc[lines["order_id"].isin(kept_orders)].to_csv(target / name, index=False)
    for item in increment.iterdir():
        if item.name not in ("orders.csv", *ORDER_FILES):
            os.link(item, target / item.name)
    return {"share": share, "weekly_orders": len(orders), "weekly_users": int(per_user.size)}


def count_increment(first: Path, increment: Path) -> dict:
    """Orders of both batches and the increment's users and order lines."""
    orders = pd.read_csv(increment / "orders.csv", usecols=["user_id"])
    lines = sum(len(pd.read_csv(increment / name, usecols=["order_id"])) for name in ORDER_FILES)
    first_orders = len(pd.read_csv(first / "orders.csv", usecols=["order_id"]))
    return {
        "first_orders": first_orders,
        "orders": len(orders),
        "users": int(orders["user_id"].nunique()),
        "lines": lines,
    }


def stage_rows(runs: list) -> list[tuple[str, list[float]]]:
    """Seconds per stage and run: the known stages (bench_pipeline.STAGES) grouped, every other step
    the runs executed on its own row, so a stage that exists appears whatever its name."""
    labels = [label for label, _ in STAGES]
    totals = []
    for *_, details in runs:
        seconds: dict[str, float] = {}
        for key, value in details["steps"].items():
            label = stage_of(key)
            label = key if label == "other steps" else label
            seconds[label] = seconds.get(label, 0.0) + value
        totals.append(seconds)
    others = sorted({label for total in totals for label in total} - set(labels))
    return [(label, [total.get(label, 0.0) for total in totals]) for label in [*labels, *others]]


def render(args: argparse.Namespace, machine: dict, runs: list, increment: dict | None = None) -> str:
    first = runs[0][2]
    lines = [
        f"## {machine['date']} — increment against first load, {args.users:,} users, seed {args.seed}",
        "",
        f"Command: `.venv/bin/python bench/bench_incremental.py {' '.join(args.argv)}`",
        "",
        *machine_table(machine),
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
    for label, seconds in stage_rows(runs):
        lines.append(f"| {label} | " + " | ".join(f"{value:.1f}" for value in seconds) + " |")
    if increment:
        share = increment["orders"] / max(increment["first_orders"], 1)
        cut = (
            f"cut from the generator's weekly batch ({increment['weekly_orders']:,} orders of "
            f"{increment['weekly_users']:,} users) to --increment-share {increment['share']:g}"
            if increment["share"] != "weekly"
            else "the generator's whole weekly batch"
        )
        lines += [
            "",
            f"Increment: {increment['orders']:,} orders of {increment['users']:,} users ({100 * share:.1f}% of the "
            f"first load's {increment['first_orders']:,} orders) with {increment['lines']:,} order lines; {cut}.",
        ]
    lines += load_footer(stage for _, _, stage, _ in runs)
    return "\n".join(lines) + "\n"


def render_scaling(args: argparse.Namespace, machine: dict, runs: list, increments: list[dict]) -> str:
    """The scaling runs as a RESULTS section: each run, the fitted line, and the per-step seconds."""
    first = runs[0][2]
    lines = [
        f"## {machine['date']} — kept increment at several sizes against the first load, "
        f"{args.users:,} users, seed {args.seed}",
        "",
        f"Command: `.venv/bin/python bench/bench_incremental.py {' '.join(args.argv)}`",
        "",
        *machine_table(machine),
        "",
        "| run | orders | share of first load's orders | affected users | exit | wall | share of first load "
        "| peak RSS | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for index, (label, _, stage, _) in enumerate(runs):
        increment = increments[index - 1] if index else None
        orders = f"{increment['orders']:,}" if increment else ""
        order_share = (
            f"{100 * increment['orders'] / max(increment['first_orders'], 1):.2f} %" if increment else ""
        )
        users = increment.get("affected_users") if increment else None
        share = stage.wall_seconds / first.wall_seconds if first.wall_seconds else 0.0
        lines.append(
            f"| {label} | {orders} | {order_share} | {'' if users is None else f'{users:,}'} "
            f"| {stage.returncode} | {stage.wall_seconds:.1f} s | {100 * share:.1f} % | {gib(stage.peak_bytes)} "
            f"| {stage.user_seconds + stage.system_seconds:.0f} |"
        )
    points = [
        (float(increment["affected_users"]), stage.wall_seconds)
        for increment, (_, _, stage, _) in zip(increments, runs[1:], strict=False)
        if stage.returncode == 0 and increment.get("affected_users") is not None
    ]
    separable = len({users for users, _ in points}) >= 2  # a line needs two different user counts
    if separable and first.wall_seconds:
        fixed, per_user = fit_fixed_and_per_user(points)
        line = (
            f"Least-squares line through the kept increments: wall = {fixed:.1f} s + {1000 * per_user:.2f} ms "
            f"per affected user. The fixed part is {100 * fixed / first.wall_seconds:.1f} % of the first load"
        )
        if per_user > 0:
            room = max(TARGET_SHARE * first.wall_seconds - fixed, 0.0) / per_user
            line += f"; within the target ({100 * TARGET_SHARE:.0f} %) fit {room:,.0f} affected users."
        else:
            line += (
                "; the slope is not positive: these sizes do not separate the per-user cost from the noise."
            )
        lines += ["", line]
    fitted = separable and len(points) == len(runs) - 1
    header = " | ".join(label for label, *_ in runs) + (" | fixed s | ms per affected user" if fitted else "")
    lines += ["", f"| stage | {header} |", "|---|" + "---|" * (len(runs) + 2 * fitted)]
    outside = [stage.wall_seconds - sum(details["steps"].values()) for _, _, stage, details in runs]
    for label, seconds in [*stage_rows(runs), ("outside the steps (start-up, landing, Dagster)", outside)]:
        row = " | ".join(f"{value:.1f}" for value in seconds)
        if fitted:  # the same line through each stage's seconds: which stages the fixed part is in
            fixed, per_user = fit_fixed_and_per_user(
                [(users, value) for (users, _), value in zip(points, seconds[1:], strict=True)]
            )
            row += f" | {fixed:.1f} | {1000 * per_user:.3f}"
        lines.append(f"| {label} | {row} |")
    lines += load_footer(stage for _, _, stage, _ in runs)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
