"""The command line every Spark job takes: `--staging URI [--master local[2]]` (assets/spark_jobs.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def parse_staged_arguments(
    prog: str, description: str, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """The staging location of the job's request and outputs, and a local master (none on a cluster)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--staging", required=True, help="the step's staging folder or URI")
    parser.add_argument("--master", default=None, help="a local master (local[2]); none on a cluster")
    return parser.parse_args(argv)
