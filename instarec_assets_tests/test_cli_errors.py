"""Blocked quality checks end `instarec materialize` with one error line naming every failed check
and its asset, never a traceback (the trace stays in the Dagster event log)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from instarec_assets.lake.locations import LakeLocations
from instarec_assets_tests.cli_helpers import ephemeral_instance, materialize  # noqa: F401
from instarec_assets_tests.landing_fixtures import write_batch

DAY_1, DAY_2 = "2025-01-06", "2025-01-13"


def repeat_a_stored_row(locations: LakeLocations, table: str, where: str) -> None:
    """Edit a stored day-1 partition by hand so that one row (the first matching `where`) is there twice."""
    uri = locations.partition_uri("clean", table, DAY_1)
    stored = f"read_parquet('{uri}', hive_partitioning = false)"
    duckdb.sql(
        f"COPY (SELECT * FROM {stored} UNION ALL (SELECT * FROM {stored} WHERE {where} ORDER BY ALL LIMIT 1)) "
        f"TO '{uri}.new' (FORMAT parquet)"
    )
    Path(f"{uri}.new").replace(uri)


def land_day_2_over_edited_day_1(
    capsys, home: Path, tmp_path: Path, *tables_and_rows: tuple[str, str]
) -> Path:
    """Day 1 materialised through the CLI, then its stored tables edited; day 2's folder written."""
    status, _, err = materialize(capsys, home, write_batch(tmp_path / DAY_1, success=False), DAY_1)
    assert (status, err) == (0, [])
    for table, where in tables_and_rows:
        repeat_a_stored_row(LakeLocations(home=str(home)), table, where)
    return write_batch(
        tmp_path / DAY_2,
        orders=[(204, 2, "prior", 4, 2, 10, "6.0")],
        prior_lines=[(204, 2, 1, 1)],
        train_lines=[],
    )


def test_a_blocked_check_ends_the_cli_with_one_line_naming_the_check_and_its_asset(
    capsys, home: Path, tmp_path: Path
):
    day_2 = land_day_2_over_edited_day_1(capsys, home, tmp_path, ("clean_orders", "true"))
    status, out, err = materialize(capsys, home, day_2, DAY_2)
    assert status == 1
    assert err == ["instarec: error: check clean_orders:clean_orders_key_unique failed"]
    assert not any("clean_order_products" in line for line in out[2:])  # blocked downstream


def test_several_blocked_checks_are_all_named_on_one_line(capsys, home: Path, tmp_path: Path):
    """A repeated order and a product with two current rows: two checks on two assets fail in one run."""
    day_2 = land_day_2_over_edited_day_1(
        capsys, home, tmp_path, ("clean_orders", "true"), ("clean_products", "is_current")
    )
    status, _, err = materialize(capsys, home, day_2, DAY_2)
    assert status == 1
    assert err == [
        "instarec: error: check clean_orders:clean_orders_key_unique failed; "
        "check clean_products:clean_products_scd2 failed"
    ]
