"""Land a folder as a partition and materialise every asset for it against the persistent instance.

Used by `instarec materialize` and `instarec demo`; the same job the landing sensor starts, so a
CLI run and a sensor run produce the same lake and both show up in the Dagster UI.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    EventLogEntry,
)

from instarec_assets.completeness import cli_run_tags, reap_dead_runs
from instarec_assets.lake.locations import LakeLocations, parse_partition_key
from instarec_assets.lake.schemas import LANDING_FILES, SUCCESS_MARKER
from instarec_assets.partitions import HISTORY_POOL, LANDING_BATCHES
from instarec_assets.sensors import LANDING_JOB_NAME


class PipelineError(RuntimeError):
    """A run did not succeed; the message is the first failure, in one line."""

    def about_source(self, landed: str, source: Path) -> PipelineError:
        """The same failure naming `source`, the folder the user gave, instead of its landing copy
        `landed`: paths under the copy, and landing files the raw step names on their own."""
        message = str(self).replace(landed, str(source))
        return PipelineError(_BARE_FILE_NAME.sub(lambda match: f"{match[1]}{source / match[2]}", message))


@dataclass(frozen=True)
class AssetReport:
    asset: str
    rows: int | None
    seconds: float


@dataclass(frozen=True)
class StepReport:
    """One finished step: a multi-asset step (raw landing files, the clean steps, the features)
    is one report with a row count for each of its assets, so it is printed once, not per asset."""

    step: str
    assets: tuple[AssetReport, ...]
    seconds: float


# Called with each step's report as soon as that step succeeds, while the run goes on.
StepListener = Callable[[StepReport], None]
# Called with (step, message) for each INFO record a step logs: progress inside long steps.
NoteListener = Callable[[str, str], None]


def dagster_instance(locations: LakeLocations) -> DagsterInstance:
    """The persistent instance under INSTAREC_HOME/dagster, shared with `make ui`."""
    dagster_home = locations.home_path / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists() or any(
        part not in config.read_text()
        for part in ("concurrency", "free_slots_after_run_end_seconds", "managed_python_loggers", "freshness")
    ):
        config.write_text(INSTANCE_CONFIG)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return DagsterInstance.get()


# The local instance: no telemetry; steps that read or rewrite the lake's history (the
# lake_history pool) run one at a time across all runs, as in infra/dagster.yaml.
INSTANCE_CONFIG = f"""telemetry:
  enabled: false
# Runs that never start are failed after the timeout. A local run whose process died is failed by
# the next instarec command or sensor tick (the local launchers cannot report a worker's health).
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
  free_slots_after_run_end_seconds: 60
# Progress logged inside long steps (feature stages, boosting rounds, GraphSAGE epochs) reaches the
# run's event log, the UI and `instarec materialize`.
python_logs:
  managed_python_loggers: [instarec_assets]
  python_log_level: INFO
# The served recommendations' freshness policy (time window) shows as asset health in the UI.
freshness:
  enabled: true
concurrency:
  pools:
    granularity: op
    default_limit: 1
# {HISTORY_POOL}: the pool of the clean, curated, model and consumption steps
"""


def check_partition_key(partition_key: str) -> None:
    """A landing batch key: a date in YYYY-MM-DD form (any date)."""
    parse_partition_key(partition_key)


def register_batch(instance: DagsterInstance, partition_key: str) -> None:
    """Make a landed batch a partition of every asset (idempotent)."""
    check_partition_key(partition_key)
    if not instance.has_dynamic_partition(LANDING_BATCHES, partition_key):
        instance.add_dynamic_partitions(LANDING_BATCHES, [partition_key])


# The names a landing folder's files may have (orders.csv, orders.csv.gz, ...).
LANDING_FILE_NAMES = frozenset(name for spec in LANDING_FILES.values() for name in spec.file_names)


def land_folder(source: Path, locations: LakeLocations, partition_key: str) -> str:
    """Copy a folder of Instacart files into the landing area as one partition, not yet complete.

    The copy gets no `_SUCCESS` marker (nor keeps an earlier one): `mark_complete` adds it once the
    batch has been materialised, so the landing sensor never takes a batch whose run failed, or is
    still going, for a complete one.
    """
    check_partition_key(partition_key)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: landing folder does not exist")
    files = sorted(path for path in source.iterdir() if path.name in LANDING_FILE_NAMES)
    if not files:
        raise FileNotFoundError(
            f"{source}: no Instacart files (orders.csv, products.csv, ...) in this folder"
        )
    target = locations.landing_partition_uri(partition_key)
    fs = locations.filesystem
    if fs.exists(target):
        fs.rm(target, recursive=True)
    fs.makedirs(target, exist_ok=True)
    for path in files:
        fs.put_file(str(path), f"{target}/{path.name}")
    return target


def mark_complete(locations: LakeLocations, partition_key: str) -> None:
    """Mark a landed batch complete (`_SUCCESS`), after its run succeeded."""
    locations.filesystem.touch(f"{locations.landing_partition_uri(partition_key)}/{SUCCESS_MARKER}")


# A landing file named on its own at the start of a failure (`orders.csv: file is empty ...`); the
# raw step joins the failures of several files with "; ".
_BARE_FILE_NAME = re.compile(
    r"(^|; )(" + "|".join(re.escape(name) for name in sorted(LANDING_FILE_NAMES)) + r")(?=: )"
)


def default_partition(source: Path, today: str) -> str:
    """A folder named like a date lands as that date; anything else lands as today (UTC)."""
    try:
        parse_partition_key(source.name)
        return source.name
    except ValueError:
        return today


# Asset groups in data-flow order; `through` stops after one of them.
ZONE_GROUPS = ("raw", "clean", "curated", "models", "consumption")


def assets_through(defs: Definitions, through: str) -> list[AssetKey]:
    """Every asset in the groups up to and including `through` (e.g. `clean`: the lake zones only)."""
    if through not in ZONE_GROUPS:
        raise ValueError(f"--through must be one of {', '.join(ZONE_GROUPS)}, not {through!r}")
    groups = set(ZONE_GROUPS[: ZONE_GROUPS.index(through) + 1])
    graph = defs.resolve_asset_graph()
    return [key for key in graph.get_all_asset_keys() if graph.get(key).group_name in groups]


def steps_through(defs: Definitions, through: str) -> list[str]:
    """The steps (ops) a run through `through` executes, one per asset or multi-asset, sorted."""
    graph = defs.resolve_asset_graph()
    return sorted({graph.get(key).assets_def.node_def.name for key in assets_through(defs, through)})


def materialize_partition(
    defs: Definitions,
    instance: DagsterInstance,
    partition_key: str,
    through: str = ZONE_GROUPS[-1],
    on_step: StepListener | None = None,
    on_note: NoteListener | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> list[AssetReport]:
    """Run the landing job for one partition; raise PipelineError naming the first step failure and
    every failed ERROR-severity check. A failed WARN-severity check (downstream still ran) goes to
    `on_warning`, one line each.

    The console logger is quiet: failures are reported once, as one line, by the caller; the full
    event log (tracebacks included) stays in the instance for the Dagster UI. `on_step` hears of
    each step as it finishes (live progress), from the instance's event stream for this run;
    `on_start` of each step as it starts, `on_note` of progress logged inside it.
    """
    register_batch(instance, partition_key)
    reap_dead_runs(instance, LANDING_JOB_NAME)
    run_id = str(uuid.uuid4())
    if on_step is not None:
        instance.add_event_listener(run_id, _StepCollector(on_step, on_note, on_start))
    result = defs.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
        partition_key=partition_key,
        asset_selection=assets_through(defs, through),
        instance=instance,
        tags=cli_run_tags(),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        run_id=run_id,
    )
    seconds_by_step: dict[str, float] = defaultdict(float)
    failures: list[str] = []
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_SUCCESS:
            seconds_by_step[event.step_key] = event.event_specific_data.duration_ms / 1000
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            error = event.event_specific_data.error
            if error.cls_name != "DagsterAssetCheckFailedError":  # named below, from the evaluations
                failures.append(_first_line(error))
    reports = [
        AssetReport(
            asset=event.asset_key.to_user_string(),
            rows=_row_count(event.step_materialization_data.materialization.metadata),
            seconds=seconds_by_step.get(event.step_key, 0.0),
        )
        for event in result.get_asset_materialization_events()
    ]
    failed_checks, warned_checks = [], []
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.passed:
            continue
        line = f"check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} failed" + (
            f": {evaluation.description}" if evaluation.description else ""
        )
        # Only an ERROR-severity failure blocks downstream assets, so only it fails the run.
        (failed_checks if evaluation.severity == AssetCheckSeverity.ERROR else warned_checks).append(line)
    for line in warned_checks:
        if on_warning is not None:
            on_warning(line)
    if failures or failed_checks or not result.success:
        # The first step failure, then every failed check (asset and check name), on one line.
        raise PipelineError("; ".join(failures[:1] + failed_checks) or "run failed")
    return reports


# Dagster's own lines about a Pipes session ("[pipes] external process successfully opened dagster
# pipes."): bookkeeping, not a step's progress; the job's own log lines come through unprefixed.
PIPES_BOOKKEEPING_PREFIX = "[pipes] "


def is_step_note(entry: EventLogEntry) -> bool:
    """Whether a plain log line of a step is progress to show: INFO, and not Pipes bookkeeping."""
    return entry.level == logging.INFO and not entry.user_message.startswith(PIPES_BOOKKEEPING_PREFIX)


class _StepCollector:
    """Gathers each step's materialisations and hands one StepReport on when the step succeeds."""

    def __init__(
        self,
        on_step: StepListener,
        on_note: NoteListener | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> None:
        self.on_step = on_step
        self.on_note = on_note
        self.on_start = on_start
        self.assets_by_step: dict[str, list[tuple[str, int | None]]] = defaultdict(list)

    def __call__(self, entry: EventLogEntry) -> None:
        event = entry.dagster_event
        if event is None and entry.step_key and self.on_note and is_step_note(entry):
            self.on_note(entry.step_key, entry.user_message)  # progress logged inside a step
        if event is None or event.step_key is None:
            return
        if event.event_type == DagsterEventType.STEP_START and self.on_start is not None:
            self.on_start(event.step_key)
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            self.assets_by_step[event.step_key].append(
                (materialization.asset_key.to_user_string(), _row_count(materialization.metadata))
            )
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            seconds = event.event_specific_data.duration_ms / 1000
            assets = tuple(
                AssetReport(asset=asset, rows=rows, seconds=seconds)
                for asset, rows in sorted(self.assets_by_step.pop(event.step_key, []))
            )
            if assets:  # asset check steps run beside the asset steps; a failed check fails the run
                self.on_step(StepReport(step=event.step_key, assets=assets, seconds=seconds))


def _row_count(metadata: dict) -> int | None:
    value = metadata.get("dagster/row_count")
    return int(value.value) if value is not None else None


def _first_line(error) -> str:
    """The innermost cause of a step error, without Dagster's wrapping or the exception class path."""
    while error.cause is not None:
        error = error.cause
    message = error.message.strip().splitlines()[0]
    prefix, _, rest = message.partition(": ")
    return rest if rest and "." in prefix and " " not in prefix else message
