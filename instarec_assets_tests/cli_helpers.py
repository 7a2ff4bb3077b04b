"""What the `instarec` command's tests share: an ephemeral Dagster instance for the runner, one
invocation as its exit status and output lines, and `instarec materialize` through clean.

Importing `ephemeral_instance` into a test module applies it to every test there (autouse).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance

from instarec_assets.cli import main
from instarec_assets.pipeline import runner


@pytest.fixture(autouse=True)
def ephemeral_instance(monkeypatch: pytest.MonkeyPatch, instance: DagsterInstance) -> DagsterInstance:
    """The test's ephemeral instance in place of the persistent one under INSTAREC_HOME/dagster: that
    one's SQLite event log syncs to disk on every event, which makes a run take over ten seconds on a
    slow disk; everything else (landing, assets, lake files) is the real thing."""
    monkeypatch.setattr(runner, "dagster_instance", lambda locations: instance)
    return instance


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    """Exit status and the stdout and stderr lines of one `instarec` invocation (never a traceback)."""
    status = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return status, captured.out.splitlines(), captured.err.splitlines()


def materialize(
    capsys: pytest.CaptureFixture[str], home: Path, batch: Path, partition: str
) -> tuple[int, list[str], list[str]]:
    """`instarec materialize --landing batch --partition partition --home home --through clean`."""
    return run_cli(
        capsys,
        "materialize",
        "--landing",
        str(batch),
        "--partition",
        partition,
        "--home",
        str(home),
        "--through",
        "clean",
    )
