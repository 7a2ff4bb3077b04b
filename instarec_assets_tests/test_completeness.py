"""Batch completeness and crash hygiene: runs killed at several points are marked failed, leave
nothing behind once the next run starts, and a rerun gives the lake of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, build_sensor_context

from instarec_assets.definitions import build_definitions
from instarec_assets.generate import generate_dataset
from instarec_assets.io_managers import publish_folder
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.sensors import landing_sensor
from instarec_assets_tests.landing_fixtures import write_small_products

REPOSITORY = Path(__file__).resolve().parent.parent


def cli(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "instarec_assets.cli", *args, "--home", str(home)]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPOSITORY), "INSTAREC_ENV": "local"}


def status(home: Path) -> dict:
    done = subprocess.run(
        cli("status", "--json", home=home), env=environment(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


def lake_contents(home: Path) -> dict[str, list]:
    """Every lake table's rows (sorted) and every model file's bytes, keyed by path under the lake."""
    lake = home / "lake"
    contents: dict[str, list] = {}
    with duckdb.connect() as conn:
        for path in sorted(lake.rglob("*.parquet")):
            if "/models/" in path.as_posix():
                continue
            rows = conn.execute(f"select * from read_parquet('{path}')").fetchall()
            # Load timestamps differ between runs by design; every other column must match.
            columns = [
                c[0] for c in conn.execute(f"describe select * from read_parquet('{path}')").fetchall()
            ]
            keep = [
                i
                for i, name in enumerate(columns)
                if name not in ("ingested_at", "loaded_at", "_ingested_at")
            ]
            # Lineage columns name the landing copy under this home; the rest of the path must match.
            contents[str(path.relative_to(lake))] = sorted(
                (
                    tuple(
                        row[i].replace(str(home), "<home>") if isinstance(row[i], str) else row[i]
                        for i in keep
                    )
                    for row in rows
                ),
                key=repr,
            )
    for model in ("xgboost_model", "graphsage_model"):
        for folder in sorted((lake / "curated" / "models" / model).glob("year=*/month=*/day=*")):
            for name in ("model.json", "graphsage_state_dict.pt"):
                if (folder / name).exists():
                    contents[f"{folder.relative_to(lake)}/{name}"] = [(folder / name).read_bytes()]
    return contents


def leftovers(home: Path) -> list[str]:
    """Staging files, unpublished temporaries and model versions no partition points to."""
    found = [str(path) for path in (home / "tmp").iterdir() if path.name != "duckdb"]
    lake = home / "lake"
    found += [str(path) for path in lake.rglob(".*.tmp")]
    for hidden in lake.rglob(".day=*"):
        partition = hidden.with_name(hidden.name[1:].split(".", 1)[0])
        if not (partition.is_symlink() and partition.resolve() == hidden.resolve()):
            found.append(str(hidden))
    return found


def wait_for(process: subprocess.Popen, condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the run ended (code {process.returncode}) before {what}: {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """A generated batch over a tenth of the catalog: five whole runs of the pipeline (an
    uninterrupted one, three killed, the repair) cost in proportion to the catalog."""
    folder = tmp_path_factory.mktemp("generated")
    products = write_small_products(folder / "products.csv")
    summary = generate_dataset(folder / "data", users=250, seed=3, batches=1, products_file=products)
    return summary.batches[0].folder


@pytest.mark.slow
def test_runs_killed_at_three_points_are_failed_cleaned_and_repaired(batch: Path, tmp_path: Path):
    reference = tmp_path / "uninterrupted"
    done = subprocess.run(
        cli("materialize", "--landing", str(batch), home=reference),
        env=environment(),
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()

    home = tmp_path / "killed"
    lake = home / "lake"
    kill_points = {
        "raw_orders is published": lambda: any((lake / "raw" / "raw_orders").rglob("*.parquet")),
        "the graph model is being trained": lambda: any((home / "tmp").glob("*-graphsage_model")),
        # (after the first two kills the curated tables exist already: this point is new to run 3)
        "the XGBoost model is published": lambda: any(
            (lake / "curated" / "models" / "xgboost_model").rglob("model.json")
        ),
    }
    for point, reached in kill_points.items():
        process = subprocess.Popen(
            cli("materialize", "--landing", str(batch), home=home),
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for(process, reached, point)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

        [state] = status(home)["batches"]
        assert state["state"] == "failed", (point, state)
        assert "failed in run" in state["detail"], state
        os.environ["DAGSTER_HOME"] = str(home / "dagster")
        with DagsterInstance.get() as instance:
            statuses = [run.status for run in instance.get_runs(RunsFilter())]
        assert DagsterRunStatus.STARTED not in statuses, point
        # The landing copy of a run that did not finish is never marked complete.
        assert not list((home / "landing").rglob("_SUCCESS")), point

    done = subprocess.run(
        cli("materialize", "--landing", str(batch), home=home),
        env=environment(),
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert [state["state"] for state in status(home)["batches"]] == ["complete"]
    assert leftovers(home) == []
    assert lake_contents(home) == lake_contents(reference)

    # The sensor leaves a complete batch alone (and remembers it as complete for its landing).
    locations = LakeLocations(env="local", home=str(home))
    defs = build_definitions(locations)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with (
        DagsterInstance.get() as instance,
        build_sensor_context(
            instance=instance,
            repository_def=defs.get_repository_def(),
            resources={"lake": defs.resources["lake"]},
        ) as context,
    ):
        result = landing_sensor(context)
    assert not getattr(result, "run_requests", None)


def test_a_model_folder_is_published_by_one_link_swap_and_old_versions_are_removed(tmp_path: Path):
    target = tmp_path / "models" / "xgboost_model" / "year=2025" / "month=01" / "day=06"
    target.parent.mkdir(parents=True)
    target.mkdir()  # a folder published before versioned folders
    (target / "model.json").write_text("legacy")
    for version in ("first", "second"):
        staged = tmp_path / f"staged-{version}"
        staged.mkdir()
        (staged / "model.json").write_text(version)
        # A killed publish's half-copied version beside the target is removed by the next publish.
        (target.parent / f".day=06.{version}killed").mkdir()
        publish_folder(staged, target)
        assert target.is_symlink()
        assert (target / "model.json").read_text() == version
        assert [path.name for path in target.parent.iterdir() if path != target] == [target.readlink().name]
