"""Benchmark the lake at full Instacart size: generate, then raw + clean through the real Dagster job.

Each stage runs as its own child process, started through the `instarec` console script exactly as a
user would run it, so its wall time and peak RSS are its own:

1. generate  `instarec generate --out <work-dir>/data --users N --seed S --batches 1`
2. raw+clean `instarec materialize --landing <batch folder> --partition <date> --home <work-dir>/home
   --through clean` (lands the folder, then runs the landing job in-process, stopping after the raw
   and clean zones: every raw and clean asset and every clean asset check)

Peak RSS is the kernel's high-water mark for the child (`os.wait4` rusage, which also covers any
processes the child waited for), cross-checked by sampling the RSS of the child's whole process tree
with psutil every 50 ms. Per-asset seconds come from the CLI's own report; per-step seconds (asset
checks included) from the run's event log in the Dagster instance under <work-dir>/home.

Usage: `.venv/bin/python bench/bench_lake.py [--users 206209] [--keep] [--append-results]`
(`make bench` runs it with `--append-results`). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
FULL_USERS = 206_209
GIB = 1024**3

# Targets from the issue, for a 2-core, 24 GB machine.
TARGET_GENERATE_SECONDS = 300.0
TARGET_RAW_CLEAN_SECONDS = 90.0
TARGET_RAW_CLEAN_RSS_BYTES = 6 * 10**9

SAMPLE_SECONDS = 0.05
GENERATED_MANIFEST = "bench_generated.json"
ASSET_LINE = re.compile(r"^\s{2}(?P<asset>\w+)\s+(?:(?P<rows>[\d,]+) rows)?\s+(?P<seconds>[\d.]+)s$")
BATCH_LINE = re.compile(
    r"^(?P<partition>\d{4}-\d{2}-\d{2}) (?P<folder>\S+) users=(?P<users>[\d,]+) (?P<rest>.*)$"
)
COUNT_FIELD = re.compile(r"(?P<name>[\w]+)=(?P<count>[\d,]+)")


@dataclass
class StageRun:
    """One child process: its command, wall time, peak memory and what it printed (timestamped)."""

    name: str
    command: list[str]
    returncode: int = 0
    wall_seconds: float = 0.0
    user_seconds: float = 0.0
    system_seconds: float = 0.0
    peak_rss_bytes: int = 0  # kernel high-water mark (ru_maxrss) of the child
    peak_tree_rss_bytes: int = 0  # highest sampled sum of RSS over the child's process tree
    lines: list[tuple[float, str]] = field(default_factory=list)
    stderr: str = ""
    load_before: float = 0.0  # 1-minute load average when the stage started
    other_cpu_seconds: float = 0.0  # CPU time the rest of the machine used while the stage ran

    @property
    def peak_bytes(self) -> int:
        return max(self.peak_rss_bytes, self.peak_tree_rss_bytes)

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)


def run_stage(name: str, command: list[str], env: dict[str, str], check: bool = True) -> StageRun:
    """Run `command` as a fresh child; time it, sample its memory, keep its stdout with timestamps.

    With `check` (the default) a non-zero exit status ends the benchmark; without it the failed stage
    is returned (its `returncode` and `stderr` say what happened) so the caller can report it.
    """
    stage = StageRun(name=name, command=command, load_before=os.getloadavg()[0])
    cpu_before = psutil.cpu_times()
    started = time.perf_counter()
    child = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    done = threading.Event()

    def read_stdout() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            stage.lines.append((time.perf_counter() - started, line.rstrip("\n")))
            print(f"    [{name} {time.perf_counter() - started:6.1f}s] {line.rstrip()}", flush=True)

    def read_stderr() -> None:
        assert child.stderr is not None
        stage.stderr = child.stderr.read()

    def sample_memory() -> None:
        try:
            root = psutil.Process(child.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                processes = [root, *root.children(recursive=True)]
                total = 0
                for process in processes:
                    with contextlib.suppress(psutil.Error):
                        total += process.memory_info().rss
                stage.peak_tree_rss_bytes = max(stage.peak_tree_rss_bytes, total)
            except psutil.Error:
                return
            done.wait(SAMPLE_SECONDS)

    threads = [threading.Thread(target=target, daemon=True) for target in (read_stdout, read_stderr)]
    sampler = threading.Thread(target=sample_memory, daemon=True)
    for thread in [*threads, sampler]:
        thread.start()
    # wait4 gives this child's own rusage (ru_maxrss covers it and the children it waited for),
    # unlike RUSAGE_CHILDREN, which would mix in the earlier stages.
    _, status, usage = os.wait4(child.pid, 0)
    stage.wall_seconds = time.perf_counter() - started
    cpu_after = psutil.cpu_times()
    done.set()
    child.returncode = os.waitstatus_to_exitcode(status)
    for thread in [*threads, sampler]:
        thread.join()
    stage.returncode = child.returncode
    stage.user_seconds = usage.ru_utime
    stage.system_seconds = usage.ru_stime
    stage.peak_rss_bytes = usage.ru_maxrss * 1024  # Linux reports kilobytes
    busy = _busy_seconds(cpu_after) - _busy_seconds(cpu_before)
    stage.other_cpu_seconds = max(0.0, busy - usage.ru_utime - usage.ru_stime)
    if stage.returncode != 0 and check:
        sys.stderr.write(stage.stderr)
        raise SystemExit(f"bench: {name} failed with exit status {stage.returncode}: {' '.join(command)}")
    return stage


def _busy_seconds(times) -> float:
    """Machine-wide CPU seconds spent running processes (all cores together; guest time is in user)."""
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def wait_until_idle(max_load: float, max_wait_seconds: float) -> None:
    """Wait (up to a limit) for the 1-minute load average to drop, so other work does not skew timings."""
    deadline = time.monotonic() + max_wait_seconds
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        print(f"bench: load average {os.getloadavg()[0]:.2f} > {max_load}; waiting", flush=True)
        time.sleep(15)


# ---------------------------------------------------------------------------------------------------
# The stages


def instarec_command() -> list[str]:
    """The console script next to this interpreter, or the module when it is not installed as one."""
    script = Path(sys.executable).parent / "instarec"
    return [str(script)] if script.exists() else [sys.executable, "-m", "instarec_assets.cli"]


def child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # so stdout lines arrive (and are timestamped) as they are printed
    env["INSTAREC_ENV"] = "local"
    env.pop("INSTAREC_HOME", None)
    if args.duckdb_memory_limit:
        env["INSTAREC_DUCKDB_MEMORY_LIMIT"] = args.duckdb_memory_limit
    return env


def through_clean(instarec: list[str], env: dict[str, str]) -> list[str]:
    """`--through clean` where the CLI has it: the job then stops after the lake's raw and clean zones."""
    help_text = subprocess.run(
        [*instarec, "materialize", "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    ).stdout
    return ["--through", "clean"] if "--through" in help_text else []


@dataclass
class Generated:
    """What the generate stage wrote: one batch folder and its row counts per file."""

    partition: str
    folder: str
    users: int
    seed: int
    rows: dict[str, int]
    bytes_written: int

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def order_lines(self) -> int:
        return self.rows.get("order_products__prior", 0) + self.rows.get("order_products__train", 0)


def parse_generate_output(output: str, users: int, seed: int) -> Generated:
    for line in output.splitlines():
        match = BATCH_LINE.match(line)
        if match:
            folder = Path(match["folder"])
            rows = {m["name"]: int(m["count"].replace(",", "")) for m in COUNT_FIELD.finditer(match["rest"])}
            size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
            return Generated(match["partition"], str(folder), users, seed, rows, size)
    raise SystemExit(f"bench: could not find the batch summary in the generate output:\n{output}")


def reusable(data_dir: Path, users: int, seed: int) -> Generated | None:
    """A dataset generated earlier with the same users and seed, complete, or None."""
    manifest = data_dir / GENERATED_MANIFEST
    if not manifest.exists():
        return None
    generated = Generated(**json.loads(manifest.read_text()))
    folder = Path(generated.folder)
    if (generated.users, generated.seed) != (users, seed) or not (folder / "_SUCCESS").exists():
        return None
    return generated


def materialize_command(instarec: list[str], generated: Generated, home: Path) -> list[str]:
    """`instarec materialize` of the generated batch into the lake at `home` (options go after it)."""
    return [
        *instarec,
        "materialize",
        "--landing",
        generated.folder,
        "--partition",
        generated.partition,
        "--home",
        str(home),
    ]


@dataclass
class PipelineReport:
    """Parsed `instarec materialize` output plus the run's step timings from the event log."""

    landed_at_seconds: float | None
    asset_rows: dict[str, int | None]
    asset_seconds: dict[str, float]
    step_seconds: dict[str, float]


def parse_materialize_output(stage: StageRun) -> tuple[float | None, dict[str, int | None], dict[str, float]]:
    landed_at = next((at for at, line in stage.lines if line.startswith("landed ")), None)
    rows: dict[str, int | None] = {}
    seconds: dict[str, float] = {}
    for _, line in stage.lines:
        match = ASSET_LINE.match(line)
        if match:
            rows[match["asset"]] = int(match["rows"].replace(",", "")) if match["rows"] else None
            seconds[match["asset"]] = float(match["seconds"])
    return landed_at, rows, seconds


def step_seconds_from_instance(home: Path) -> dict[str, float]:
    """Seconds per step (assets and checks) of the latest run in the instance under `home`."""
    try:
        from dagster import DagsterEventType, DagsterInstance
    except ImportError:
        return {}
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return {}
        records = instance.get_records_for_run(runs[0].run_id, of_type=DagsterEventType.STEP_SUCCESS).records
        return {
            record.event_log_entry.dagster_event.step_key: record.event_log_entry.dagster_event.event_specific_data.duration_ms
            / 1000
            for record in records
        }


def step_totals(report: PipelineReport) -> dict[str, float]:
    """Raw, clean and check seconds: from the event log when it is there, else from the CLI lines."""
    steps = report.step_seconds
    if steps:
        raw = sum(seconds for key, seconds in steps.items() if key.startswith("raw_"))
        clean = sum(
            seconds for key, seconds in steps.items() if key.startswith("clean_") and key.endswith("_step")
        )
        checks = sum(steps.values()) - raw - clean
        return {"raw": raw, "clean": clean, "checks": checks}
    raw = sum(seconds for asset, seconds in report.asset_seconds.items() if asset.startswith("raw_"))
    # clean_X and quarantined_X come from one step and print that step's seconds twice: count it once.
    clean = sum(seconds for asset, seconds in report.asset_seconds.items() if asset.startswith("clean_"))
    return {"raw": raw, "clean": clean}


# ---------------------------------------------------------------------------------------------------
# Machine description and results


def machine_description() -> dict[str, str]:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import duckdb

    try:
        from importlib.metadata import version

        dagster_version = version("dagster")
    except Exception:
        dagster_version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": f"{os.cpu_count()} cores, {cpu_model}",
        "memory": f"{psutil.virtual_memory().total / GIB:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "dagster": dagster_version,
        "duckdb_memory_limit": os.environ.get("INSTAREC_DUCKDB_MEMORY_LIMIT", "4GB (default)"),
        "commit": commit,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _short(part: str) -> str:
    """A command argument relative to the repository, where it lies inside it."""
    try:
        return str(Path(part).relative_to(REPO_ROOT))
    except ValueError:
        return part


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def machine_table(machine: dict) -> list[str]:
    """The machine description as a two-column markdown table (one line per entry)."""
    return [
        "| machine | |",
        "|---|---|",
        *(f"| {key.replace('_', ' ')} | {value} |" for key, value in machine.items()),
    ]


# A run whose other processes used more than this share of its wall time in CPU seconds was loaded.
LOADED_SHARE = 0.25


def load_footer(stages) -> list[str]:
    """The warning under a results table when other processes competed for the CPU during a run
    (`stages`: StageRun objects with other_cpu_seconds and wall_seconds); empty when none did."""
    stages = list(stages)
    if not any(stage.other_cpu_seconds / max(stage.wall_seconds, 1) > LOADED_SHARE for stage in stages):
        return []
    which = "some runs; their wall times are" if len(stages) > 1 else "this run; its wall times are"
    return ["", f"**Other processes competed for the CPU during {which} inflated.**"]


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def render_markdown(
    args: argparse.Namespace,
    machine: dict[str, str],
    generated: Generated,
    generate_stage: StageRun | None,
    pipeline_stage: StageRun,
    report: PipelineReport,
) -> str:
    command = "bench/bench_lake.py " + " ".join(args.argv)
    lines = [
        f"## {machine['date']} — {generated.users:,} users, seed {generated.seed}",
        "",
        f"Command: `.venv/bin/python {command.strip()}`",
        "",
        *machine_table(machine),
        "",
        f"Dataset: {generated.total_rows:,} rows in {generated.bytes_written / 10**6:,.0f} MB of CSV — "
        + ", ".join(f"{name} {count:,}" for name, count in generated.rows.items())
        + f"; {generated.order_lines:,} order lines.",
        "",
        "Stage commands (each a fresh process): "
        + "; ".join(
            f"`{' '.join(_short(part) for part in stage.command)}`"
            for stage in (generate_stage, pipeline_stage)
            if stage is not None
        )
        + ".",
        "",
        "| stage | wall time | throughput | peak RSS | CPU (user+sys) | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    if generate_stage is not None:
        ok = generate_stage.wall_seconds <= TARGET_GENERATE_SECONDS
        lines.append(
            f"| generate (`instarec generate`) | {generate_stage.wall_seconds:.1f} s "
            f"| {generated.total_rows / generate_stage.wall_seconds:,.0f} rows written/s "
            f"| {gib(generate_stage.peak_bytes)} "
            f"| {generate_stage.user_seconds + generate_stage.system_seconds:.1f} s "
            f"| ≤ {TARGET_GENERATE_SECONDS:.0f} s | {verdict(ok)} |"
        )
    else:
        lines.append("| generate | reused (`--keep`) | | | | ≤ 300 s | not measured |")
    ok_time = pipeline_stage.wall_seconds <= TARGET_RAW_CLEAN_SECONDS
    ok_rss = pipeline_stage.peak_bytes <= TARGET_RAW_CLEAN_RSS_BYTES
    lines.append(
        f"| raw + clean (`instarec materialize`) | {pipeline_stage.wall_seconds:.1f} s "
        f"| {generated.order_lines / pipeline_stage.wall_seconds:,.0f} order lines/s "
        f"| {gib(pipeline_stage.peak_bytes)} "
        f"| {pipeline_stage.user_seconds + pipeline_stage.system_seconds:.1f} s "
        f"| ≤ {TARGET_RAW_CLEAN_SECONDS:.0f} s, ≤ 6 GB RSS | time {verdict(ok_time)}, memory {verdict(ok_rss)} |"
    )
    stages = [stage for stage in (generate_stage, pipeline_stage) if stage is not None]
    lines += [
        "",
        "Other work on the machine while each stage ran (CPU seconds used by every other process; "
        f"this machine has {os.cpu_count()} cores): "
        + ", ".join(
            f"{stage.name} {stage.other_cpu_seconds:.0f} s "
            f"(≈{stage.other_cpu_seconds / stage.wall_seconds:.2f} cores on average, "
            f"1-minute load {stage.load_before:.2f} at its start)"
            for stage in stages
        )
        + ".",
    ]
    lines += load_footer(stages)
    totals = step_totals(report)
    accounted = sum(totals.values()) + (report.landed_at_seconds or 0.0)
    lines += [
        "",
        "Peak RSS is the larger of the kernel's high-water mark for the child process (`ru_maxrss` from "
        "`wait4`) and the highest sampled RSS of its process tree (psutil, every 50 ms): "
        + (
            f"generate {gib(generate_stage.peak_rss_bytes)} / {gib(generate_stage.peak_tree_rss_bytes)}, "
            if generate_stage
            else ""
        )
        + f"raw + clean {gib(pipeline_stage.peak_rss_bytes)} / {gib(pipeline_stage.peak_tree_rss_bytes)}.",
        "",
        "Raw + clean breakdown (wall seconds inside the one `instarec materialize` process):",
        "",
        "| part | seconds |",
        "|---|---|",
        f"| start-up and landing copy (until the `landed` line) | {report.landed_at_seconds or 0:.1f} |",
        *(f"| {part} steps (sum) | {seconds:.1f} |" for part, seconds in totals.items()),
        f"| Dagster run overhead, event log, exit | {pipeline_stage.wall_seconds - accounted:.1f} |",
        f"| **total** | **{pipeline_stage.wall_seconds:.1f}** |",
        "",
        "| step | rows | seconds |",
        "|---|---|---|",
    ]
    steps = report.step_seconds or {}
    rows_by_step = {f"{asset}": rows for asset, rows in report.asset_rows.items()}
    if steps:
        for key, seconds in sorted(steps.items(), key=lambda item: -item[1]):
            table = key.removesuffix("_step")
            rows = rows_by_step.get(table)
            lines.append(f"| {key} | {'' if rows is None else f'{rows:,}'} | {seconds:.1f} |")
    else:
        for asset, seconds in report.asset_seconds.items():
            rows = report.asset_rows.get(asset)
            lines.append(f"| {asset} | {'' if rows is None else f'{rows:,}'} | {seconds:.1f} |")
    return "\n".join(lines) + "\n"


def append_results(section: str) -> None:
    if not RESULTS_FILE.exists():
        RESULTS_FILE.write_text(
            "# Lake benchmark results\n\n"
            "Appended by `make bench` (`.venv/bin/python bench/bench_lake.py --append-results`); "
            "newest last. How to run and read them: [README.md](README.md).\n\n"
            "Targets (2-core, 24 GB machine): generate the full size (206,209 users) in at most 5 minutes; "
            "raw + clean of the full size in at most 90 seconds and 6 GB peak RSS.\n"
        )
    with RESULTS_FILE.open("a") as handle:
        handle.write("\n" + section)


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--users", type=int, default=FULL_USERS, help="users to generate (default: full size)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work-dir",
        default=str(BENCH_DIR / "data"),
        help="generated data and lake home (default bench/data)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="reuse a dataset generated earlier with the same --users and --seed (generate is not timed)",
    )
    parser.add_argument("--append-results", action="store_true", help="append a section to bench/RESULTS.md")
    parser.add_argument(
        "--duckdb-memory-limit", help="set INSTAREC_DUCKDB_MEMORY_LIMIT for the pipeline (default: inherit)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        metavar="LOAD",
        help="before each stage, wait (up to 10 minutes) for the 1-minute load average to fall below LOAD",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(args.work_dir).resolve()
    data_dir = work_dir / "data"
    home = work_dir / "home"
    env = child_env(args)
    if args.duckdb_memory_limit:
        os.environ["INSTAREC_DUCKDB_MEMORY_LIMIT"] = args.duckdb_memory_limit
    instarec = instarec_command()

    generated = reusable(data_dir, args.users, args.seed) if args.keep else None
    generate_stage = None
    if generated is None:
        if data_dir.exists():
            shutil.rmtree(data_dir)
        if args.wait_idle is not None:
            wait_until_idle(args.wait_idle, 600)
        print(f"bench: generating {args.users:,} users under {data_dir}", flush=True)
        generate_stage = run_stage(
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
        generated = parse_generate_output(generate_stage.output(), args.users, args.seed)
        (data_dir / GENERATED_MANIFEST).write_text(json.dumps(asdict(generated), indent=2))
    else:
        print(f"bench: reusing {generated.folder} (--keep)", flush=True)

    if home.exists():
        shutil.rmtree(home)  # a fresh lake each time: the partition is a first snapshot
    if args.wait_idle is not None:
        wait_until_idle(args.wait_idle, 600)
    print(f"bench: raw + clean of {generated.folder} into {home}", flush=True)
    pipeline_stage = run_stage(
        "raw+clean",
        [*materialize_command(instarec, generated, home), *through_clean(instarec, env)],
        env,
    )
    landed_at, asset_rows, asset_seconds = parse_materialize_output(pipeline_stage)
    report = PipelineReport(landed_at, asset_rows, asset_seconds, step_seconds_from_instance(home))

    section = render_markdown(args, machine_description(), generated, generate_stage, pipeline_stage, report)
    (work_dir / "last_run.json").write_text(
        json.dumps(
            {
                "generated": asdict(generated),
                "generate": asdict(generate_stage) if generate_stage else None,
                "raw_clean": asdict(pipeline_stage),
                "steps": report.step_seconds,
            },
            indent=2,
        )
    )
    print()
    print(section)
    if args.append_results:
        append_results(section)
        print(f"bench: appended to {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
