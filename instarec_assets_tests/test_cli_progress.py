"""Live progress of `instarec materialize`: in a pipe (not a terminal) each finished step is one plain
line, printed while the run goes on, with its assets' rows and its seconds, once per step; on a
terminal the same lines scroll above a progress bar that shows at once and keeps redrawing."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, PipesSubprocessClient, asset, define_asset_job

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


CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def render_screen(output: str) -> list[str]:
    """The lines a terminal shows for `output`: carriage return, line feed, erase-line and cursor-up,
    the controls rich's live display moves with; colours and cursor hiding are ignored. The test
    sets a width that no line reaches, so there is no wrapping to emulate."""
    lines, row, col, at = [""], 0, 0, 0
    while at < len(output):
        control = CSI.match(output, at)
        if control:
            params, final = control.groups()
            if final == "K":  # erase in line: 2 the whole line (rich's), else from the cursor on
                lines[row] = "" if params == "2" else lines[row][:col]
            elif final == "A":
                row = max(0, row - int(params or 1))
            at = control.end()
            continue
        char = output[at]
        at += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif char >= " ":
            line = lines[row].ljust(col)
            lines[row] = line[:col] + char + line[col + 1 :]
            col += 1
    return [line.rstrip() for line in lines if line.strip()]


def test_materialize_on_a_terminal_shows_a_bar_at_once_and_each_step_on_its_own_line(tmp_path: Path):
    """Under a pseudo-terminal: the bar shows before the pipeline has even loaded, each finished step
    is a whole line above it (Dagster points fd 1 at the run's compute-log file while the run goes
    on; a bar writing through fd 1 stopped redrawing and printed the step lines onto its own row),
    and the screen ends with the six step lines and the finished bar."""
    batch = write_batch(tmp_path / "batch", success=False)
    command = [sys.executable, "-m", "instarec_assets.cli", "materialize", "--landing", str(batch)]
    command += ["--partition", DAY_1, "--home", str(tmp_path / "home"), "--through", "clean"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "400", "LINES": "60", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=follower, stderr=subprocess.PIPE, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]
    output = b"".join(chunks).decode()
    assert output.index("loading the pipeline") < output.index("landed ")  # shown before the imports end
    screen = render_screen(output)
    assert screen[0].startswith(f"landed {batch} as partition {DAY_1}"), screen
    assert screen[1] == f"running 6 steps for partition {DAY_1} through clean", screen
    steps = [STEP_LINE.match(line) for line in screen[2:8]]
    assert all(steps), screen
    assert [(int(step[1]), int(step[2])) for step in steps] == [(i, 6) for i in range(1, 7)]
    assert {step[3] for step in steps} == CLEAN_STEPS
    assert len(screen) == 9 and re.search(r"━+ 6/6 \d+:\d\d:\d\d$", screen[8]), screen
    # The bar showed the run's steps before any had finished.
    assert re.search(r" 0/6 \d+:\d\d:\d\d", re.sub(r"\x1b\[[0-9;]*m", "", output))


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


def test_a_pipes_step_notes_the_jobs_own_lines_but_not_dagsters_session_bookkeeping(tmp_path: Path):
    """A Spark step runs its job through Pipes: the job's log lines are the step's progress, Dagster's
    `[pipes] external process successfully opened ...` is not (it was a second line per step)."""
    from instarec_assets.pipeline.runner import _StepCollector

    script = tmp_path / "job.py"
    script.write_text(
        "from dagster_pipes import open_dagster_pipes\n"
        "with open_dagster_pipes() as pipes:\n"
        "    pipes.log.info('cleaned 12 rows')\n"
    )

    @asset
    def piped(context):
        return (
            PipesSubprocessClient().run(command=[sys.executable, str(script)], context=context).get_results()
        )

    notes: list[tuple[str, str]] = []
    run_id = str(uuid.uuid4())
    with DagsterInstance.ephemeral() as instance:
        instance.add_event_listener(
            run_id, _StepCollector(lambda report: None, lambda step, message: notes.append((step, message)))
        )
        job = Definitions(assets=[piped], jobs=[define_asset_job("piped_job")]).resolve_job_def("piped_job")
        assert job.execute_in_process(instance=instance, run_id=run_id).success
    assert notes == [("piped", "cleaned 12 rows")]
