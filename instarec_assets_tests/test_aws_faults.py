"""aws mode with S3 failing under a run: `instarec materialize` through a proxy that cuts or freezes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import duckdb
import pytest
from s3fs import S3FileSystem

from instarec_assets.lake.locations import LakeLocations
from instarec_assets_tests.fault_proxy import DROP, FORWARD, FREEZE, FaultProxy
from instarec_assets_tests.landing_fixtures import ORDERS, write_batch

pytestmark = [pytest.mark.aws, pytest.mark.slow]
DAY_1 = "2025-01-06"
REPO_ROOT = Path(__file__).resolve().parents[1]
CLEAN_TABLES = ("clean_orders", "clean_order_products", "clean_products")


def materialize(
    landing: Path, env: dict[str, str], on_line=None, deadline_s: float = 240
) -> subprocess.CompletedProcess:
    """`instarec materialize` in a subprocess; `on_line` sees each stdout line as it is printed. Past
    `deadline_s` the process is killed and the test fails, so a hung run can never hang the suite."""
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
    stderr_lines: list[str] = []

    def read_stdout() -> None:
        for line in process.stdout:
            stdout_lines.append(line)
            if on_line is not None:
                on_line(line)

    readers = [
        threading.Thread(target=read_stdout),
        threading.Thread(target=lambda: stderr_lines.extend(process.stderr)),
    ]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"instarec materialize still running after {deadline_s:.0f} s: {''.join(stdout_lines)}")
    finally:
        for reader in readers:
            reader.join()
    return subprocess.CompletedProcess(
        process.args, process.returncode, "".join(stdout_lines), "".join(stderr_lines)
    )


def when_printed(prefix: str, action):
    """An `on_line` that runs `action` once, on the first stdout line starting with `prefix`."""
    done = threading.Event()

    def on_line(line: str) -> None:
        if line.lstrip().startswith(prefix) and not done.is_set():
            done.set()
            action()

    return on_line


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
    done = materialize(landing, env, on_line=when_printed("landed ", lambda: fault_proxy.set_mode(DROP)))
    assert_one_error_line(done, fault_proxy.url.removeprefix("http://"))

    fault_proxy.set_mode(FORWARD)
    again = materialize(landing, env)
    assert again.returncode == 0, again.stderr
    after_cut = clean_rows(aws_locations, moto_endpoint)
    assert len(after_cut["clean_orders"]) > 0

    assert uninterrupted_clean_rows(aws_locations, fault_proxy, moto_endpoint, landing, tmp_path) == after_cut


def uninterrupted_clean_rows(
    aws_locations: LakeLocations, proxy: FaultProxy, moto_endpoint: str, landing: Path, tmp_path: Path
) -> dict[str, list[tuple]]:
    """The clean tables of the same batch run once, without a fault, into four fresh buckets."""
    suffix = "-b"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=aws_locations.region)
    buckets = {
        zone: getattr(aws_locations, f"{zone}_bucket") + suffix
        for zone in ("raw", "clean", "curated", "consumption")
    }
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    clean_env = run_env(
        proxy,
        INSTAREC_HOME=str(tmp_path / "uninterrupted"),
        **{f"INSTAREC_{zone.upper()}_BUCKET": bucket for zone, bucket in buckets.items()},
    )
    straight = materialize(landing, clean_env)
    assert straight.returncode == 0, straight.stderr
    reference = LakeLocations(
        **{**aws_locations.__dict__, **{f"{zone}_bucket": bucket for zone, bucket in buckets.items()}}
    )
    return clean_rows(reference, moto_endpoint)


def test_frozen_endpoint_mid_run_ends_in_bounded_time_and_a_rerun_equals_an_uninterrupted_run(
    aws_locations: LakeLocations, fault_proxy: FaultProxy, moto_endpoint: str, tmp_path: Path
):
    """The proxy stops answering once the raw step has published (connections accepted, never
    answered): each S3 call gives up after s3fs's 5 tries of INSTAREC_S3_TIMEOUT_S, every step that
    was still to run fails or is skipped, and the run ends with one line naming the endpoint."""
    timeout_s = 2
    landing = write_batch(tmp_path / DAY_1, success=False)
    env = run_env(fault_proxy, INSTAREC_S3_TIMEOUT_S=str(timeout_s))
    frozen_at: list[float] = []

    def freeze() -> None:
        frozen_at.append(time.monotonic())
        fault_proxy.set_mode(FREEZE)

    done = materialize(landing, env, on_line=when_printed("[1/", freeze), deadline_s=240)
    frozen_for = time.monotonic() - frozen_at[0]
    assert_one_error_line(done, "Read timeout", fault_proxy.url.removeprefix("http://"))
    # Five clean steps at most, each at most one call of 5 tries (plus s3fs's pauses, 2.4 s in all).
    assert frozen_for < 5 * (S3FileSystem.retries * timeout_s + 3) + 20, frozen_for
    assert "[1/6] raw_landing_files" in done.stdout

    fault_proxy.set_mode(FORWARD)
    again = materialize(landing, env)
    assert again.returncode == 0, again.stderr
    after_freeze = clean_rows(aws_locations, moto_endpoint)
    assert len(after_freeze["clean_orders"]) == len(ORDERS)
    assert (
        uninterrupted_clean_rows(aws_locations, fault_proxy, moto_endpoint, landing, tmp_path) == after_freeze
    )
