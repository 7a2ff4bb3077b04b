"""The `instarec` command end to end: one line per asset on success, one `instarec: error:` line and
exit status 1 on an expected failure, never a traceback.

Runs use an ephemeral Dagster instance in place of the persistent one under INSTAREC_HOME/dagster:
the persistent instance's SQLite event log syncs to disk on every event, which makes a run take
over ten seconds on a slow disk; everything else (landing, assets, lake files) is the real thing.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance

from instarec_assets.cli import main
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline import runner
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, TRAIN_LINES, write_batch

DAY_1 = "2025-01-06"
ASSETS = (
    "raw_aisles",
    "raw_departments",
    "raw_order_products_prior",
    "raw_order_products_train",
    "raw_orders",
    "raw_products",
    "clean_aisles",
    "quarantined_aisles",
    "clean_departments",
    "quarantined_departments",
    "clean_orders",
    "quarantined_orders",
    "clean_products",
    "quarantined_products",
    "clean_order_products",
    "quarantined_order_products",
)


@pytest.fixture(autouse=True)
def ephemeral_instance(monkeypatch: pytest.MonkeyPatch, instance: DagsterInstance) -> DagsterInstance:
    monkeypatch.setattr(runner, "dagster_instance", lambda locations: instance)
    return instance


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    """Exit status and the stdout and stderr lines of one `instarec` invocation."""
    status = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return status, captured.out.splitlines(), captured.err.splitlines()


def materialize(capsys, home: Path, batch: Path, partition: str = DAY_1) -> tuple[int, list[str], list[str]]:
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


def test_good_batch_prints_one_line_per_asset_and_exits_0(capsys, home: Path, tmp_path: Path):
    batch = write_batch(tmp_path / "batch", success=False)
    status, out, err = materialize(capsys, home, batch)
    assert (status, err) == (0, [])
    assert out[0] == f"landed {batch} as partition {DAY_1} at {home.resolve()}/landing/{DAY_1}"
    assert sorted(line.split()[0] for line in out[1:]) == sorted(ASSETS)
    rows = {line.split()[0]: line.split()[1] for line in out[1:]}
    assert rows["clean_orders"] == str(len(ORDERS))
    assert rows["clean_order_products"] == str(len(PRIOR_LINES) + len(TRAIN_LINES))
    assert rows["quarantined_orders"] == "0"


def test_missing_column_exits_1_with_one_error_line_naming_file_and_column(
    capsys, home: Path, tmp_path: Path
):
    batch = write_batch(tmp_path / "batch", success=False)
    orders = batch / "orders.csv"
    orders.write_text("\n".join(",".join(line.split(",")[:-1]) for line in orders.read_text().splitlines()))
    status, _, err = materialize(capsys, home, batch)
    assert status == 1
    assert len(err) == 1
    assert err[0].startswith(
        "instarec: error: orders.csv: missing column(s) days_since_prior_order (expected: "
    )


def test_missing_file_exits_1_naming_the_file(capsys, home: Path, tmp_path: Path):
    batch = write_batch(tmp_path / "batch", success=False)
    (batch / "order_products__train.csv").unlink()
    status, _, err = materialize(capsys, home, batch)
    assert status == 1
    assert err == [
        f"instarec: error: {home.resolve()}/landing/{DAY_1}/order_products__train.csv: "
        "file is missing (also looked for .csv.gz)"
    ]


def test_bad_rows_succeed_and_are_quarantined_in_the_lake(capsys, home: Path, tmp_path: Path):
    orders = [*ORDERS[:-1], (203, 2, "test", 3, 9, 16, "30.0")]
    batch = write_batch(tmp_path / "batch", orders=orders, success=False)
    status, out, err = materialize(capsys, home, batch)
    assert (status, err) == (0, [])
    assert any(line.split()[:2] == ["quarantined_orders", "1"] for line in out)
    quarantine = LakeLocations(home=str(home)).partition_uri("clean", "quarantined_orders", DAY_1)
    assert quarantine.endswith(
        "lake/clean/quarantined_orders/year=2025/month=01/day=06/quarantined_orders.parquet"
    )
    rows = duckdb.sql(f"SELECT source_file, source_row, reason, record FROM '{quarantine}'").fetchall()
    assert len(rows) == 1
    source_file, source_row, reason, record = rows[0]
    assert source_file.endswith(f"landing/{DAY_1}/orders.csv") and source_row == len(ORDERS)
    assert reason == "order_dow: out of range 0..6: '9'"
    assert '"order_id":"203"' in record


def test_status_lists_every_table_after_a_run(capsys, home: Path, tmp_path: Path):
    assert run_cli(capsys, "status", "--home", str(home)) == (
        0,
        [f"the lake at {home.resolve()} is empty"],
        [],
    )
    materialize(capsys, home, write_batch(tmp_path / "batch", success=False))
    status, out, err = run_cli(capsys, "status", "--home", str(home))
    assert (status, err) == (0, [])
    listed = {(line.split()[0], line.split()[1]) for line in out}
    assert listed == {("raw" if name.startswith("raw_") else "clean", name) for name in ASSETS}
    orders_line = next(line for line in out if line.split()[1] == "clean_orders")
    assert f"1 partition(s) {DAY_1}" in orders_line and f"latest {len(ORDERS):>12,} rows" in orders_line


@pytest.mark.parametrize(
    ("partition", "message"),
    [
        ("2025-1-6", "partition key '2025-1-6' is not a date in YYYY-MM-DD form"),
        ("2025-02-30", "partition key '2025-02-30' is not a valid date: day is out of range for month"),
        ("2023-12-31", "partition key '2023-12-31' is outside the partition range 2024-01-01.."),
        ("2999-01-01", "partition key '2999-01-01' is outside the partition range 2024-01-01.."),
    ],
)
def test_invalid_partition_exits_1_with_one_line_and_lands_nothing(
    capsys, home: Path, tmp_path: Path, partition: str, message: str
):
    batch = write_batch(tmp_path / "batch", success=False)
    status, out, err = materialize(capsys, home, batch, partition)
    assert (status, out) == (1, [])
    assert len(err) == 1 and err[0].startswith(f"instarec: error: {message}")
    assert not (home / "landing").exists()


def test_missing_landing_folder_exits_1_with_one_line(capsys, home: Path, tmp_path: Path):
    status, _, err = materialize(capsys, home, tmp_path / "nowhere")
    assert (status, err) == (1, [f"instarec: error: {tmp_path / 'nowhere'}: landing folder does not exist"])
