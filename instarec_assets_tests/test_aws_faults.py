"""aws mode with S3 failing under a run: `instarec materialize` through a proxy that cuts or freezes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest

from instarec_assets.lake.locations import LakeLocations
from instarec_assets_tests.fault_proxy import DROP, FORWARD, FaultProxy
from instarec_assets_tests.landing_fixtures import write_batch

pytestmark = [pytest.mark.aws, pytest.mark.slow]
DAY_1 = "2025-01-06"
REPO_ROOT = Path(__file__).resolve().parents[1]
CLEAN_TABLES = ("clean_orders", "clean_order_products", "clean_products")


def materialize(landing: Path, env: dict[str, str], on_landed=None) -> subprocess.CompletedProcess:
    """`instarec materialize` in a subprocess; `on_landed` runs once the landing line is printed."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instarec_assets.cli",
            "materialize",
            "--landing",
            str(landing),
            "--partition",
            DAY_1,
            "--through",
            "clean",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    stdout_lines: list[str] = []

    def read_stdout() -> None:
        for line in process.stdout:
            stdout_lines.append(line)
            if line.startswith("landed ") and on_landed is not None:
                on_landed()

    reader = threading.Thread(target=read_stdout)
    reader.start()
    stderr = process.stderr.read()
    process.wait(timeout=120)
    reader.join()
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(stdout_lines), stderr)


def run_env(proxy: FaultProxy, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()}
    env["INSTAREC_AWS_ENDPOINT_URL"] = proxy.url
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def clean_rows(locations: LakeLocations, endpoint: str) -> dict[str, list[tuple]]:
    """Every clean table's rows for the batch from the clean bucket, less the lineage columns that
    name where and when a run read them (path and ingest time differ between homes and runs)."""
    fs = LakeLocations(**{**locations.__dict__, "endpoint_url": endpoint}).filesystem
    rows = {}
    for table in CLEAN_TABLES:
        uri = f"{locations.zone_uri('clean')}/{table}/year=2025/month=01/day=06/{table}.parquet"
        with fs.open(uri, "rb") as handle:
            data = handle.read()
        path = Path(locations.home_path) / f"{table}-{len(rows)}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows[table] = sorted(
            duckdb.sql(f"SELECT * EXCLUDE (_source_file, _ingested_at) FROM '{path}'").fetchall(), key=repr
        )
    return rows


def assert_one_error_line(done: subprocess.CompletedProcess, *named: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("instarec: error:")]
    assert len(errors) == 1, done.stderr
    for name in named:
        assert name in errors[0], errors[0]


def test_cut_mid_run_is_one_line_and_a_rerun_equals_an_uninterrupted_run(
    aws_locations: LakeLocations, fault_proxy: FaultProxy, moto_endpoint: str, tmp_path: Path
):
    landing = write_batch(tmp_path / DAY_1, success=False)
    env = run_env(fault_proxy, INSTAREC_S3_TIMEOUT_S="3")
    done = materialize(landing, env, on_landed=lambda: fault_proxy.set_mode(DROP))
    assert_one_error_line(done, fault_proxy.url.removeprefix("http://"))

    fault_proxy.set_mode(FORWARD)
    again = materialize(landing, env)
    assert again.returncode == 0, again.stderr
    after_cut = clean_rows(aws_locations, moto_endpoint)
    assert len(after_cut["clean_orders"]) > 0

    uninterrupted_home = tmp_path / "uninterrupted"
    suffix = "-b"
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=aws_locations.region)
    buckets = {
        zone: getattr(aws_locations, f"{zone}_bucket") + suffix
        for zone in ("raw", "clean", "curated", "consumption")
    }
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    clean_env = run_env(
        fault_proxy,
        INSTAREC_HOME=str(uninterrupted_home),
        **{f"INSTAREC_{zone.upper()}_BUCKET": bucket for zone, bucket in buckets.items()},
    )
    straight = materialize(landing, clean_env)
    assert straight.returncode == 0, straight.stderr
    reference = LakeLocations(
        **{**aws_locations.__dict__, **{f"{zone}_bucket": bucket for zone, bucket in buckets.items()}}
    )
    assert clean_rows(reference, moto_endpoint) == after_cut
