"""One local Spark session for the whole test run: a JVM start costs 5-30 s, so every engine test shares it."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def spark_engine() -> Iterator:
    """A SparkConnection on a local-mode session (skipped without the spark extra)."""
    pytest.importorskip("pyspark", reason="the spark extra is not installed")
    from instarec_assets.lake.spark_connection import SparkConnection, spark_session

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers: this interpreter
        session = spark_session()
        yield SparkConnection(session)
        session.stop()
