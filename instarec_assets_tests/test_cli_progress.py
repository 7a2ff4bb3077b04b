"""Live progress of `instarec materialize`: in a pipe (not a terminal) each finished step is one plain
line, printed while the run goes on, with its assets' rows and its seconds, once per step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instarec_assets_tests.landing_fixtures import ORDERS, write_batch

DAY_1 = "2025-01-06"
REPO_ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^  \[(\d+)/(\d+)\] (\w+) +(\d+\.\d)s  (.+)$")
# The steps of a run through the clean zone: one raw step for all six files, one per clean table.
CLEAN_STEPS = {
    "raw_landing_files",
    "clean_aisles_step",
    "clean_departments_step",
    "clean_orders_step",
    "clean_products_step",
    "clean_order_products_step",
}


def test_materialize_in_a_pipe_prints_each_step_once_as_it_finishes(tmp_path: Path):
    batch = write_batch(tmp_path / "batch", success=False)
    command = [sys.executable, "-m", "instarec_assets.cli", "materialize", "--landing", str(batch)]
    command += ["--partition", DAY_1, "--home", str(tmp_path / "home"), "--through", "clean"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    arrivals: list[tuple[float, str]] = [
        (time.monotonic() - started, line.rstrip("\n")) for line in process.stdout
    ]
    assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    lines = [line for _, line in arrivals]
    assert "\x1b[" not in "".join(lines)  # no terminal control codes in a pipe
    assert lines[0].startswith(f"landed {batch} as partition {DAY_1}")
    assert lines[1] == f"running 6 steps for partition {DAY_1} through clean"
    steps = [STEP_LINE.match(line) for line in lines[2:]]
    assert all(steps), lines[2:]
    assert [(int(step[1]), int(step[2])) for step in steps] == [(i, 6) for i in range(1, 7)]
    assert {step[3] for step in steps} == CLEAN_STEPS  # each step once
    # Every asset appears in exactly one step line, with its rows; the raw step lists all six files.
    assets = [name for step in steps for name in re.findall(r"(\w+) [\d,]+ rows", step[5])]
    assert len(assets) == len(set(assets)) == 6 + 2 * 5
    raw = next(step for step in steps if step[3] == "raw_landing_files")
    assert f"raw_orders {len(ORDERS)} rows" in raw[5]
    assert all(float(step[4]) >= 0 for step in steps)
    # Lines stream: the header arrived while steps were still running, well before the last step
    # line (a buffered stdout would deliver them all at once, at exit).
    assert arrivals[-1][0] - arrivals[1][0] > 0.5, arrivals


@pytest.mark.slow
def test_long_steps_report_progress_inside_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Feature stages, boosting rounds and GraphSAGE epochs arrive as notes while their step runs,
    through the instance's event log (the same records the UI shows)."""
    from instarec_assets.definitions import build_definitions
    from instarec_assets.generate import generate_dataset
    from instarec_assets.lake.locations import LakeLocations
    from instarec_assets.pipeline.runner import dagster_instance, land_folder, materialize_partition

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # dagster_instance sets its own
    batch = generate_dataset(tmp_path / "generated", users=120, seed=4, batches=1).batches[0]
    locations = LakeLocations(env="local", home=str(tmp_path / "home"))
    land_folder(batch.folder, locations, batch.partition)
    notes: list[tuple[str, str]] = []
    steps_done: list[str] = []
    materialize_partition(
        build_definitions(locations),
        dagster_instance(locations),
        batch.partition,
        through="models",
        on_step=lambda report: steps_done.append(report.step),
        on_note=lambda step, message: notes.append((step, message)),
    )
    stages = [message for step, message in notes if step == "curated_features_step"]
    assert [message.split(":")[0] for message in stages] == [f"feature stage {i}/12" for i in range(1, 13)]
    rounds = [message for step, message in notes if step == "xgboost_model" and "boosting round" in message]
    assert rounds and re.match(r"boosting round \d+/\d+: validation logloss \d\.\d{4}$", rounds[0])
    assert any(step == "graphsage_step" and message.startswith("epoch 1/") for step, message in notes)
    assert {"curated_features_step", "graphsage_step", "xgboost_model"} <= set(steps_done)
