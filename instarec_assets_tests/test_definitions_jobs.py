"""The jobs a UI user launches: one per stage beside the full landing job, with step processes forked
from a server that has already imported the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.system_config.objects import ResolvedRunConfig

from instarec_assets.definitions import STAGE_JOBS
from instarec_assets.partitions import landing_batches
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets_tests.landing_fixtures import write_batch

REPO_ROOT = Path(__file__).resolve().parent.parent
PRELOADED = {"forkserver": {"preload_modules": ["instarec_assets.definitions"]}}


def _asset_names(job) -> set[str]:
    return {key.to_user_string() for key in job.asset_layer.selected_asset_keys}


def test_stage_jobs_split_the_landing_job_by_zone_without_overlap(defs):
    graph = defs.resolve_asset_graph()
    everything = _asset_names(defs.resolve_job_def(LANDING_JOB_NAME))
    assert everything == {key.to_user_string() for key in graph.get_all_asset_keys()}
    seen: set[str] = set()
    for stage, (groups, _) in STAGE_JOBS.items():
        job = defs.resolve_job_def(f"{stage}_stage")
        names = _asset_names(job)
        assert names, stage
        assert {graph.get(AssetKey.from_user_string(name)).group_name for name in names} == set(groups)
        assert not names & seen, f"{stage} repeats {sorted(names & seen)}"
        assert job.partitions_def == landing_batches
        seen |= names
    assert seen == everything
    assert "xgboost_model" in _asset_names(defs.resolve_job_def("models_stage"))
    assert "dynamodb_recommendations" in _asset_names(defs.resolve_job_def("serve_stage"))


def test_every_job_and_the_asset_graph_fork_steps_from_a_preloaded_server(defs):
    jobs = [defs.resolve_job_def(name) for name in [LANDING_JOB_NAME, *(f"{s}_stage" for s in STAGE_JOBS)]]
    jobs.append(defs.resolve_implicit_global_asset_job_def())  # the asset graph's Materialize button
    for job in jobs:
        engine = ResolvedRunConfig.build(job, {}).execution.execution_engine_config
        assert job.executor_def.name == "multiprocess_preloaded", job.name
        assert engine["start_method"] == PRELOADED, job.name


@pytest.mark.slow
def test_ingest_stage_runs_as_a_ui_run_would_and_stops_at_the_clean_zone(home, tmp_path, monkeypatch):
    """`dagster job execute` runs the job with its executor, as the UI's run worker does."""
    landing = write_batch(tmp_path / "landing" / "2025-01-06")
    env = {**os.environ, "INSTAREC_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    bin_dir = Path(sys.executable).parent
    landed = subprocess.run(
        [str(bin_dir / "instarec"), "materialize", "--landing", str(landing), "--through", "raw"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert landed.returncode == 0, landed.stderr[-2000:]
    command = [str(bin_dir / "dagster"), "job", "execute", "-m", "instarec_assets", "-a", "defs"]
    command += ["-j", "ingest_stage", "--tags", json.dumps({"dagster/partition": "2025-01-06"})]
    executed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert executed.returncode == 0, executed.stderr[-3000:]

    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        assert (run.job_name, run.status) == ("ingest_stage", DagsterRunStatus.SUCCESS)
        assert run.tags["dagster/partition"] == "2025-01-06"
        materialized = {key.to_user_string() for key in instance.get_asset_keys()}
        events = instance.get_records_for_run(run.run_id).records
    assert {"clean_orders", "clean_order_products", "clean_products"} <= materialized
    assert "user_features" not in materialized
    started = [r for r in events if r.event_log_entry.dagster_event_type == "STEP_WORKER_STARTED"]
    assert len(started) >= 6  # each step in its own (forked) process
