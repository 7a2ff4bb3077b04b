"""Shared fixtures: an isolated INSTAREC_HOME per test and the Dagster definitions pointing at it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions

from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations

pytest_plugins = [
    "instarec_assets_tests.aws_fixtures",
    "instarec_assets_tests.fault_proxy",
    "instarec_assets_tests.spark_fixtures",
]

warnings.filterwarnings("ignore", message=".*is currently in preview.*")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh lake home; the environment points at it so CLI and definitions agree."""
    path = tmp_path / "instarec-home"
    path.mkdir()
    monkeypatch.setenv("INSTAREC_HOME", str(path))
    monkeypatch.setenv("INSTAREC_ENV", "local")
    return path


@pytest.fixture
def locations(home: Path) -> LakeLocations:
    return LakeLocations(env="local", home=str(home))


@pytest.fixture
def defs(locations: LakeLocations) -> Definitions:
    return build_definitions(locations)


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral
