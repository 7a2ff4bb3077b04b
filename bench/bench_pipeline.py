"""Benchmark the whole pipeline: landing CSVs to the loaded serving table, in one `instarec materialize`.

One fresh child process, started through the `instarec` console script exactly as a user would run it:

    instarec materialize --landing <batch folder> --partition <date> --home <fresh INSTAREC_HOME>

(no `--through`: every zone, the whole landing job). Wall time, CPU time and peak RSS come from the
child's own rusage (`os.wait4`) cross-checked with psutil sampling of its process tree; both helpers are
bench_lake.py's. Per-step seconds come from the run's event log in the Dagster instance under the
fresh home (the CLI's per-asset lines are the fallback) and are grouped into stages: raw + clean,
curated features, graphsage_step (GraphSAGE training and embeddings), xgboost_model training
(evaluation and the without-similarity fit included), reorder_predictions scoring, next_basket,
recommendations, dynamodb_recommendations (the serving load) and analyst_warehouse.

The dataset is bench_lake.py's (`<work-dir>/data`), reused when it was generated with the same
--users/--seed, generated (untimed here; bench_lake.py times generate) otherwise.

Usage: `.venv/bin/python bench/bench_pipeline.py [--users 206209] [--append-results]`;
`--render-only` re-renders the last run's JSON without running anything. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_lake
from bench_lake import (
    GENERATED_MANIFEST,
    Generated,
    StageRun,
    append_results,
    child_env,
    gib,
    instarec_command,
    machine_description,
    materialize_command,
    parse_generate_output,
    parse_materialize_output,
    reusable,
    run_stage,
    verdict,
    wait_until_idle,
)

BENCH_DIR = bench_lake.BENCH_DIR
FULL_USERS = bench_lake.FULL_USERS

# Targets from issue 3, for a 2-core, 24 GB machine.
TARGET_PIPELINE_SECONDS = 15 * 60.0
TARGET_PIPELINE_RSS_BYTES = 8 * 10**9

# Stages in data-flow order: (label, predicate on a step key).
STAGES: list[tuple[str, object]] = [
    ("raw + clean (assets and checks)", lambda key: key.startswith(("raw_", "clean_"))),
    ("curated features (curated_features_step)", lambda key: key.startswith("curated")),
    ("GraphSAGE training + embeddings (graphsage_step)", lambda key: key.startswith("graphsage")),
    ("training + evaluation (xgboost_model)", lambda key: key.startswith("xgboost_model")),
    ("scoring (reorder_predictions)", lambda key: key.startswith("reorder_predictions")),
    ("baskets (next_basket)", lambda key: key.startswith("next_basket")),
    ("recommendations", lambda key: key == "recommendations" or key.startswith("recommendations_")),
    ("serving load (dynamodb_recommendations)", lambda key: key.startswith("dynamodb_recommendations")),
    ("analyst_warehouse", lambda key: key.startswith("analyst_warehouse")),
]
MODEL_METADATA = (
    "auc",
    "f1",
    "best_iteration",
    "mean_f1_model",
    "mean_f1_without_similarity",
    "mean_f1_last_order",
    "mean_f1_frequency",
)


def stage_of(step_key: str) -> str:
    for label, matches in STAGES:
        if matches(step_key):  # type: ignore[operator]
            return label
    return "other steps"


def run_details(home: Path) -> dict:
    """Step seconds, failed steps and checks, and the model's metadata, from the instance under `home`."""
    details: dict = {"steps": {}, "failed_steps": [], "failed_checks": [], "model": {}}
    try:
        from dagster import AssetKey, DagsterEventType, DagsterInstance
    except ImportError:
        return details
    if not (home / "dagster").exists():
        return details
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return details
        run_id = runs[0].run_id
        for record in instance.get_records_for_run(run_id).records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            if event.event_type == DagsterEventType.STEP_SUCCESS:
                details["steps"][event.step_key] = event.event_specific_data.duration_ms / 1000
            elif event.event_type == DagsterEventType.STEP_FAILURE:
                error = event.event_specific_data.error
                while error is not None and error.cause is not None:
                    error = error.cause
                message = error.message.strip().splitlines()[0] if error is not None else ""
                details["failed_steps"].append({"step": event.step_key, "error": message})
            elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                evaluation = event.event_specific_data
                if not evaluation.passed:
                    details["failed_checks"].append(
                        {
                            "check": f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}",
                            "description": evaluation.description,
                        }
                    )
        materialization = instance.get_latest_materialization_event(AssetKey("xgboost_model"))
        if materialization is not None and materialization.asset_materialization is not None:
            metadata = materialization.asset_materialization.metadata
            details["model"] = {name: metadata[name].value for name in MODEL_METADATA if name in metadata}
        details["feature_set_rows"] = {}
        for feature_set in ("training_set", "inference_set"):
            event = instance.get_latest_materialization_event(AssetKey(feature_set))
            if event is not None and event.asset_materialization is not None:
                details["feature_set_rows"][feature_set] = {
                    name: entry.value
                    for name, entry in event.asset_materialization.metadata.items()
                    if name.endswith("_rows") and isinstance(entry.value, int)
                }
    return details


def stage_seconds(steps: dict[str, float], asset_seconds: dict[str, float]) -> dict[str, float]:
    totals = {label: 0.0 for label, _ in STAGES}
    if steps:
        for key, seconds in steps.items():
            label = stage_of(key)
            totals[label] = totals.get(label, 0.0) + seconds
        return totals
    # Fallback: the CLI's per-asset lines; a multi-asset step prints its seconds once per output.
    seen: set[tuple[str, float]] = set()
    for asset, seconds in asset_seconds.items():
        label = stage_of(asset)
        if asset.startswith(("quarantined_", "training_set", "inference_set")) or (label, seconds) in seen:
            continue
        seen.add((label, seconds))
        totals[label] = totals.get(label, 0.0) + seconds
    return totals


def render_markdown(
    args: argparse.Namespace, machine: dict, generated: Generated, stage: StageRun, details: dict
) -> str:
    command = "bench/bench_pipeline.py " + " ".join(args.argv)
    landed_at, asset_rows, asset_seconds = parse_materialize_output(stage)
    totals = stage_seconds(details["steps"], asset_seconds)
    accounted = sum(totals.values()) + (landed_at or 0.0)
    ok = stage.returncode == 0
    ok_time = ok and stage.wall_seconds <= TARGET_PIPELINE_SECONDS
    ok_rss = stage.peak_bytes <= TARGET_PIPELINE_RSS_BYTES
    cores = os.cpu_count() or 1
    other = stage.other_cpu_seconds / stage.wall_seconds if stage.wall_seconds else 0.0
    lines = [
        f"## {machine['date']} — whole pipeline, {generated.users:,} users, seed {generated.seed}",
        "",
        f"Command: `.venv/bin/python {command.strip()}`",
        "",
        *bench_lake.machine_table(machine),
        "",
        f"Dataset: {generated.total_rows:,} rows in {generated.bytes_written / 10**6:,.0f} MB of CSV — "
        + ", ".join(f"{name} {count:,}" for name, count in generated.rows.items())
        + f"; {generated.order_lines:,} order lines.",
        "",
        "Stage command (one fresh process, fresh INSTAREC_HOME): `"
        + " ".join(bench_lake._short(part) for part in stage.command)
        + "`.",
        "",
        "| measure | value | target | result |",
        "|---|---|---|---|",
        f"| exit status | {stage.returncode} | 0 | {verdict(ok)} |",
        f"| wall time, landing CSVs to loaded serving table | {stage.wall_seconds:.1f} s "
        f"({stage.wall_seconds / 60:.1f} min) | ≤ {TARGET_PIPELINE_SECONDS / 60:.0f} min | {verdict(ok_time)} |",
        f"| peak RSS | {gib(stage.peak_bytes)} ({stage.peak_bytes / 10**9:.2f} GB) "
        f"| ≤ {TARGET_PIPELINE_RSS_BYTES / 10**9:.0f} GB | {verdict(ok_rss)} |",
        f"| CPU (user+sys) | {stage.user_seconds + stage.system_seconds:.1f} s | | |",
        "",
        f"Peak RSS: `ru_maxrss` {gib(stage.peak_rss_bytes)}, sampled process tree "
        f"{gib(stage.peak_tree_rss_bytes)}; the larger is reported.",
        "",
        f"Other work on the machine while it ran: {stage.other_cpu_seconds:.0f} CPU s by other processes "
        f"(≈{other:.2f} of {cores} cores on average; 1-minute load {stage.load_before:.2f} at the start).",
    ]
    lines += bench_lake.load_footer([stage])
    if not ok:
        first_error = (stage.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        lines += ["", f"**The run failed**: `{first_error}`"]
        for failure in details["failed_steps"]:
            lines.append(
                f"- failed step `{failure['step']}` ({stage_of(failure['step'])}): {failure['error']}"
            )
        for check in details["failed_checks"]:
            lines.append(f"- failed check `{check['check']}`: {check['description']}")
    lines += [
        "",
        "| stage | seconds | share of wall |",
        "|---|---|---|",
        f"| start-up and landing copy (until the `landed` line) | {landed_at or 0:.1f} "
        f"| {100 * (landed_at or 0) / stage.wall_seconds:.0f} % |",
        *(
            f"| {label} | {seconds:.1f} | {100 * seconds / stage.wall_seconds:.0f} % |"
            for label, seconds in totals.items()
            if seconds or label != "other steps"
        ),
        f"| Dagster run overhead, IO managers, event log, exit | {stage.wall_seconds - accounted:.1f} "
        f"| {100 * (stage.wall_seconds - accounted) / stage.wall_seconds:.0f} % |",
        f"| **total** | **{stage.wall_seconds:.1f}** | |",
    ]
    if details["model"]:
        lines += [
            "",
            "Model (xgboost_model metadata): "
            + ", ".join(
                f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                for name, value in details["model"].items()
            )
            + ".",
        ]
    if details.get("feature_set_rows"):
        lines += [
            "",
            "Feature sets (curated metadata; the seed system's Kaggle sets were about 8.47M train and 4.83M "
            "test rows): "
            + "; ".join(
                f"{feature_set} " + ", ".join(f"{name} {value:,}" for name, value in counts.items())
                for feature_set, counts in details["feature_set_rows"].items()
            )
            + ".",
        ]
    steps = details["steps"]
    slow = sorted(
        ((key, seconds) for key, seconds in steps.items() if not key.startswith(("raw_", "clean_"))),
        key=lambda item: -item[1],
    )
    if slow:
        lines += [
            "",
            "Steps after the clean zone (event log):",
            "",
            "| step | rows | seconds |",
            "|---|---|---|",
        ]
        for key, seconds in slow:
            rows = asset_rows.get(key)
            lines.append(f"| {key} | {'' if rows is None else f'{rows:,}'} | {seconds:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=FULL_USERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work-dir",
        default=str(BENCH_DIR / "data"),
        help="generated data under DIR/data (shared with bench_lake.py), the lake under DIR/pipeline_home",
    )
    parser.add_argument("--append-results", action="store_true")
    parser.add_argument("--duckdb-memory-limit")
    parser.add_argument("--wait-idle", type=float, metavar="LOAD")
    parser.add_argument("--render-only", action="store_true", help="re-render DIR/pipeline_last_run.json")
    args = parser.parse_args(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--render-only"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(args.work_dir).resolve()
    data_dir = work_dir / "data"
    home = work_dir / "pipeline_home"
    last_run = work_dir / "pipeline_last_run.json"
    env = child_env(args)
    if args.duckdb_memory_limit:
        os.environ["INSTAREC_DUCKDB_MEMORY_LIMIT"] = args.duckdb_memory_limit
    instarec = instarec_command()

    if args.render_only:
        saved = json.loads(last_run.read_text())
        generated = Generated(**saved["generated"])
        stage = StageRun(**{**saved["pipeline"], "lines": [tuple(x) for x in saved["pipeline"]["lines"]]})
        args.argv = saved.get("argv", args.argv)
        machine = saved["machine"]
    else:
        generated = reusable(data_dir, args.users, args.seed)
        if generated is None:
            if data_dir.exists():
                shutil.rmtree(data_dir)
            print(f"bench: generating {args.users:,} users under {data_dir} (not timed here)", flush=True)
            gen = run_stage(
                "generate",
                [
                    *instarec,
                    "generate",
                    "--out",
                    str(data_dir),
                    "--users",
                    str(args.users),
                    "--seed",
                    str(args.seed),
                ],
                env,
            )
            generated = parse_generate_output(gen.output(), args.users, args.seed)
            (data_dir / GENERATED_MANIFEST).write_text(json.dumps(asdict(generated), indent=2))
        else:
            print(f"bench: reusing {generated.folder}", flush=True)
        if home.exists():
            shutil.rmtree(home)  # a fresh INSTAREC_HOME: the partition is a first snapshot
        if args.wait_idle is not None:
            wait_until_idle(args.wait_idle, 600)
        print(f"bench: whole pipeline of {generated.folder} into {home}", flush=True)
        stage = run_stage(
            "pipeline",
            materialize_command(instarec, generated, home),
            env,
            check=False,
        )
        machine = machine_description()
        last_run.write_text(
            json.dumps(
                {
                    "generated": asdict(generated),
                    "pipeline": asdict(stage),
                    "machine": machine,
                    "argv": args.argv,
                },
                indent=2,
            )
        )
    details = run_details(home)
    section = render_markdown(args, machine, generated, stage, details)
    saved = json.loads(last_run.read_text())
    saved["details"] = details
    last_run.write_text(json.dumps(saved, indent=2, default=str))
    print()
    print(section)
    if stage.returncode != 0:
        sys.stderr.write(stage.stderr[-4000:])
    if args.append_results:
        append_results(section)
        print(f"bench: appended to {bench_lake.RESULTS_FILE}")
    return 0 if stage.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
