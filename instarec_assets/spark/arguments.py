"""The command line every Spark job takes: `--staging URI [--master local[2] [--jvm-log FILE]]`
(assets/spark_jobs.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def parse_staged_arguments(
    prog: str, description: str, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """The staging location of the job's request and outputs, and a local master (none on a cluster)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--staging", required=True, help="the step's staging folder or URI")
    parser.add_argument("--master", default=None, help="a local master (local[2]); none on a cluster")
    parser.add_argument(
        "--jvm-log", type=Path, default=None, help="a file for the local JVM's console output (Spark's log)"
    )
    return parser.parse_args(argv)
