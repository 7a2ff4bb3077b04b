"""The repository is a `dg` project: pyproject.toml's [tool.dg] names the code location, and
`dg check defs` (dagster-dg-cli, in the dev extra) loads it without errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dagster import Definitions

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_tool_dg_names_the_code_location_that_workspace_yaml_loads() -> None:
    dg = PYPROJECT["tool"]["dg"]
    assert dg["directory_type"] == "project"
    project = dg["project"]
    assert project["root_module"] == "instarec_assets"
    assert project["code_location_name"] == PYPROJECT["tool"]["dagster"]["code_location_name"] == "instarec"
    target = __import__(project["code_location_target_module"], fromlist=["defs"])
    assert isinstance(target.defs, Definitions)
    workspace = (REPO / "workspace.yaml").read_text()
    assert f"module_name: {project['code_location_target_module']}" in workspace


def _dg() -> str | None:
    beside = Path(sys.executable).with_name("dg")
    return str(beside) if beside.exists() else shutil.which("dg")


@pytest.mark.slow
@pytest.mark.skipif(
    _dg() is None, reason="dg is not installed (pip install -e '.[dev]' brings dagster-dg-cli)"
)
def test_dg_check_defs_loads_the_definitions(tmp_path: Path) -> None:
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "INSTAREC_HOME": str(tmp_path / "home")}
    env.pop("INSTAREC_ENV", None)
    done = subprocess.run(
        [str(_dg()), "check", "defs", "--use-active-venv"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "All definitions loaded successfully." in done.stdout
