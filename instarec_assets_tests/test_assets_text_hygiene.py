"""Control characters in a landed text field, through the raw and clean assets of a real batch: the row
is quarantined with a reason naming the column, the clean table never holds it, and the row
accounting (and its blocking check) holds."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from dagster import AssetKey

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import assets_through, register_batch
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets_tests.landing_fixtures import write_batch

DAY_1 = "2025-01-06"
# Two catalog products that no order line of the fixture buys, so quarantining them touches nothing else.
NUL_LINE = b"10,Sparkling Orange\x00 Juice & Prickly Pear Beverage,115,7\n"
SOH_LINE = b"20,Pomegranate Cranberry & Aloe\x01 Vera Enrich Drink,98,7\n"


def land_with_control_characters(locations: LakeLocations) -> int:
    """A real landing batch whose products.csv has a NUL in product 10's name and \\x01 in product
    20's; returns the file's data rows."""
    folder = write_batch(Path(locations.landing_partition_uri(DAY_1)))
    products = folder / "products.csv"
    content = products.read_bytes()
    for clean_line, bad_line in (
        (b"10,Sparkling Orange Juice & Prickly Pear Beverage,115,7\n", NUL_LINE),
        (b"20,Pomegranate Cranberry & Aloe Vera Enrich Drink,98,7\n", SOH_LINE),
    ):
        assert content.count(clean_line) == 1
        content = content.replace(clean_line, bad_line)
    products.write_bytes(content)
    return content.count(b"\n") - 1


def test_control_characters_in_product_names_are_quarantined_by_the_clean_asset(
    defs, instance, locations: LakeLocations
):
    product_rows = land_with_control_characters(locations)
    register_batch(instance, DAY_1)
    result = defs.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
        partition_key=DAY_1,
        instance=instance,
        raise_on_error=False,
        asset_selection=assets_through(defs, "clean"),
    )
    assert result.success

    raw = locations.partition_uri("raw", "raw_products", DAY_1)
    landed = duckdb.sql(
        f"SELECT product_name FROM '{raw}' WHERE product_id IN ('10', '20') ORDER BY 1"
    ).fetchall()
    assert landed == [
        ("Pomegranate Cranberry & Aloe\x01 Vera Enrich Drink",),
        ("Sparkling Orange\x00 Juice & Prickly Pear Beverage",),
    ]

    quarantine = locations.partition_uri("clean", "quarantined_products", DAY_1)
    quarantined = duckdb.sql(
        f"SELECT source_row, reason, record FROM '{quarantine}' ORDER BY source_row"
    ).fetchall()
    assert [(row, reason) for row, reason, _ in quarantined] == [
        (
            10,
            r"product_name: contains a control character (\x00 at position 17): 'Sparkling Orange\x00 Juice & Prickly Pear B'",
        ),
        (
            20,
            r"product_name: contains a control character (\x01 at position 29): 'Pomegranate Cranberry & Aloe\x01 Vera Enric'",
        ),
    ]
    assert (
        json.loads(quarantined[0][2])["product_name"] == "Sparkling Orange\x00 Juice & Prickly Pear Beverage"
    )
    assert json.loads(quarantined[1][2])["product_id"] == "20"

    clean = locations.partition_uri("clean", "clean_products", DAY_1)
    assert duckdb.sql(f"SELECT count(*) FROM '{clean}' WHERE product_id IN (10, 20)").fetchall() == [(0,)]
    control = duckdb.sql(
        f"SELECT count(*) FROM '{clean}' WHERE regexp_matches(product_name, '[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]')"
    ).fetchall()
    assert control == [(0,)]
    assert duckdb.sql(f"SELECT count(*) FROM '{clean}'").fetchall() == [(product_rows - 2,)]

    metadata = instance.get_latest_materialization_event(
        AssetKey("clean_products")
    ).asset_materialization.metadata
    assert (metadata["raw_rows"].value, metadata["quarantined_rows"].value) == (product_rows, 2)
    assert metadata["raw_rows"].value == (
        metadata["clean_rows"].value + metadata["quarantined_rows"].value + metadata["duplicate_rows"].value
    )
    checks = {
        evaluation.check_name: evaluation.passed
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.asset_key == AssetKey("clean_products")
    }
    assert checks["row_accounting"] is True and all(checks.values()), checks
