"""Shared fixtures: an isolated INSTAREC_HOME per test and the Dagster definitions pointing at it."""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
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

# Seconds per test file, longest first under `make test` (xdist --dist loadfile): with 2 workers a
# whole-pipeline file that starts last is the suite's tail, so the long files start first. The
# committed file seeds a fresh clone; each run records what it measured in the pytest cache, which
# then takes precedence. A file neither names counts as 60 s if it has a slow test, else 1 s.
FILE_SECONDS = Path(__file__).with_name("file_seconds.json")
CACHE_KEY = "instarec/file_seconds"


def _recorded_seconds(config: pytest.Config) -> dict[str, float]:
    seconds = json.loads(FILE_SECONDS.read_text())
    cache = getattr(config, "cache", None)
    if cache is not None:
        seconds.update(cache.get(CACHE_KEY, {}))
    return seconds


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order whole files by their recorded time, longest first; tests keep their order in a file.
    Every xdist worker sorts the same collection the same way, as xdist requires."""
    recorded = _recorded_seconds(config)
    first_seen: dict[str, int] = {}
    slow_files: set[str] = set()
    for index, item in enumerate(items):
        name = item.path.name
        first_seen.setdefault(name, index)
        if item.get_closest_marker("slow"):
            slow_files.add(name)

    def estimate(name: str) -> float:
        return recorded.get(name, 60.0 if name in slow_files else 1.0)

    items.sort(key=lambda item: (-estimate(item.path.name), first_seen[item.path.name]))


_measured: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Per file: setup, call and teardown seconds (on the xdist controller, from every worker)."""
    _measured[Path(report.nodeid.split("::", 1)[0]).name] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    if cache is None or hasattr(session.config, "workerinput") or not _measured:
        return
    seconds = cache.get(CACHE_KEY, {})
    seconds.update({name: round(value, 1) for name, value in _measured.items()})
    cache.set(CACHE_KEY, dict(sorted(seconds.items())))


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
