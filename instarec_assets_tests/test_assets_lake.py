"""The raw and clean zones as Dagster assets, materialised for real partitions of a local lake."""

from __future__ import annotations

from pathlib import Path

import duckdb
from dagster import AssetKey

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, TRAIN_LINES, write_batch

DAY_1 = "2025-01-06"


def run_partition(defs, instance, partition_key: str):
    return defs.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
        partition_key=partition_key, instance=instance, raise_on_error=False
    )


def test_landing_batch_materialises_raw_and_clean_with_lineage(defs, instance, locations: LakeLocations):
    write_batch(Path(locations.landing_partition_uri(DAY_1)))
    result = run_partition(defs, instance, DAY_1)
    assert result.success

    raw_orders = locations.partition_uri("raw", "raw_orders", DAY_1)
    assert raw_orders.endswith("raw/raw_orders/year=2025/month=01/day=06/raw_orders.parquet")
    rows = duckdb.sql(f"SELECT order_id, _source_file, _source_row FROM '{raw_orders}' ORDER BY _source_row").fetchall()
    assert [row[0] for row in rows] == [str(order[0]) for order in ORDERS]
    assert rows[0][1].endswith("2025-01-06/orders.csv") and rows[0][2] == 1

    clean_lines = locations.partition_uri("clean", "clean_order_products", DAY_1)
    counts = dict(duckdb.sql(f"SELECT eval_set, count(*) FROM '{clean_lines}' GROUP BY ALL").fetchall())
    assert counts == {"prior": len(PRIOR_LINES), "train": len(TRAIN_LINES)}

    materialization = instance.get_latest_materialization_event(AssetKey("clean_orders")).asset_materialization
    assert materialization.metadata["dagster/row_count"].value == len(ORDERS)
    assert materialization.metadata["row_accounting"].value == f"raw {len(ORDERS)} = clean {len(ORDERS)} + quarantined 0 + duplicates 0"
    checks = {
        (evaluation.asset_key.to_user_string(), evaluation.check_name): evaluation.passed
        for evaluation in result.get_asset_check_evaluations()
    }
    assert checks[("clean_orders", "row_accounting")]
    assert checks[("clean_order_products", "clean_order_products_keys")]
    assert all(checks.values()), checks
