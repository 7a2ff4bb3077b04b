"""Forgetting a shopper reaches the analysts' masked tables (aws mode with INSTAREC_ANALYST_BUCKET), against
the moto server on 127.0.0.1: the current snapshot republished without the user, older snapshot folders
and every replaced version deleted, Glue still pointing at valid folders, the audit record naming it all;
and `instarec status` reporting the masked tables' latest batch."""

from __future__ import annotations

import io
import json
import uuid

import boto3
import pyarrow.parquet as pq
import pytest
from dagster import AssetMaterialization, DagsterInstance

from instarec_assets.assets.privacy import FORGET_JOB_NAME
from instarec_assets.backends.serving_store import DynamoDbRecommendationStore
from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.status import LakeReport, warehouse_status
from instarec_assets.privacy.analyst_tables import DELETED, REPUBLISHED
from instarec_assets.warehouse.masked import MASKED_TABLES, masked_table_location, masked_table_uri
from instarec_assets.warehouse.salt import user_key
from instarec_assets_tests.aws_fixtures import REGION
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, write_batch
from instarec_assets_tests.test_warehouse_masked import (  # noqa: F401
    DAY_1,
    DAY_2,
    MASKED,
    SALT,
    analyst,
    run_partition,
)

pytestmark = pytest.mark.aws
USER = 2
USER_ORDERS = {order[0] for order in ORDERS if order[1] == USER}
# Day 2: a test order of user 1 and a first order of user 3, so the second snapshot has three users.
DAY_2_ORDERS = [(105, 1, "test", 5, 2, 9, "6.0"), (301, 3, "prior", 1, 2, 8, "")]
DAY_2_LINES = [(301, 24852, 1, 0), (301, 13176, 2, 0)]


def every_version(s3, bucket: str) -> list[tuple[str, str, bytes]]:
    """Each version's key, id and bytes, noncurrent ones included."""
    found = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            body = s3.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])["Body"]
            found.append((version["Key"], version["VersionId"], body.read()))
    return found


def table_rows(s3, bucket: str, table: str, as_of: str) -> list[dict]:
    key = masked_table_uri(bucket, table, as_of).removeprefix(f"s3://{bucket}/")
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).to_pylist()


def sorted_rows(rows) -> list[dict]:
    return sorted(rows, key=repr)


@pytest.mark.slow
def test_forget_republishes_the_current_masked_snapshot_and_deletes_every_older_copy(
    aws_locations: LakeLocations,
    aws_env: str,
    analyst: dict[str, str],  # noqa: F811
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
):
    bucket, database = analyst["bucket"], analyst["database"]
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    s3.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )  # as analytics.yaml
    table = f"forget-{uuid.uuid4().hex[:8]}"
    DynamoDbRecommendationStore(table, endpoint_url=aws_env, region_name=REGION).ensure_table()
    monkeypatch.setenv("INSTAREC_DYNAMODB_TABLE", table)
    key = user_key(USER, SALT)

    with DagsterInstance.ephemeral() as instance:
        run_partition(aws_locations, instance, DAY_1, write_batch(tmp_path / "day1"))
        day2 = write_batch(tmp_path / "day2", orders=DAY_2_ORDERS, prior_lines=DAY_2_LINES, train_lines=[])
        run_partition(aws_locations, instance, DAY_2, day2)
        before = {name: table_rows(s3, bucket, name, DAY_2) for name in ("orders", "order_products")}
        assert {row["user_key"] for row in before["orders"]} >= {key}  # the user is in both snapshots
        assert {row["user_key"] for row in table_rows(s3, bucket, "orders", DAY_1)} >= {key}

        result = (
            build_definitions(aws_locations)
            .resolve_job_def(FORGET_JOB_NAME)
            .execute_in_process(
                run_config={"ops": {"forget_shopper_op": {"config": {"user_id": USER, "reason": "erasure"}}}},
                instance=instance,
            )
        )
        assert result.success
        record = json.loads(result.output_for_node("forget_shopper_op")["record"])
        status = warehouse_status(aws_locations, instance)

    # No version of any object in the analysts' bucket holds a row of the user.
    versions = every_version(s3, bucket)
    assert versions
    for object_key, version_id, body in versions:
        rows = pq.read_table(io.BytesIO(body)).to_pylist()
        assert not [row for row in rows if row.get("user_key") == key], (object_key, version_id)
        assert not [row for row in rows if row.get("order_id") in USER_ORDERS], (object_key, version_id)
        assert key.encode() not in body and SALT.encode() not in body, object_key
    # Only the current snapshot is left: one version of each table's DAY_2 object, nothing of DAY_1.
    assert sorted(k for k, _, _ in versions) == sorted(
        masked_table_uri(bucket, name, DAY_2).removeprefix(f"s3://{bucket}/") for name in MASKED_TABLES
    )
    # Other users' rows are unchanged.
    after = {name: table_rows(s3, bucket, name, DAY_2) for name in ("orders", "order_products")}
    assert sorted_rows(after["orders"]) == sorted_rows(r for r in before["orders"] if r["user_key"] != key)
    assert sorted_rows(after["order_products"]) == sorted_rows(
        r for r in before["order_products"] if r["order_id"] not in USER_ORDERS
    )
    assert len(after["orders"]) == len(ORDERS) - len(USER_ORDERS) + len(DAY_2_ORDERS)
    # Glue still points every table at the DAY_2 folder, which holds its file.
    glue = boto3.client("glue", endpoint_url=aws_env, region_name=REGION)
    for name in MASKED_TABLES:
        location = glue.get_table(DatabaseName=database, Name=name)["Table"]["StorageDescriptor"]["Location"]
        assert location == masked_table_location(bucket, name, DAY_2)
        prefix = location.removeprefix(f"s3://{bucket}/")
        assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["KeyCount"] == 1, name
    # The audit record names what was republished and deleted in the analysts' bucket.
    by_target = {item["target"]: item for item in record["rewritten"]}
    orders_now = by_target[masked_table_uri(bucket, "orders", DAY_2)]
    assert orders_now["kind"] == REPUBLISHED and orders_now["rows_removed"] == len(USER_ORDERS)
    assert orders_now["rows_kept"] == len(after["orders"]) and orders_now["noncurrent_versions_deleted"] == 1
    lines_now = by_target[masked_table_uri(bucket, "order_products", DAY_2)]
    assert lines_now["rows_removed"] == sum(1 for line in PRIOR_LINES if line[0] in USER_ORDERS)
    deleted = {target for target, item in by_target.items() if item["kind"] == DELETED}
    assert deleted == {masked_table_uri(bucket, name, DAY_1) for name in MASKED_TABLES}
    assert by_target[masked_table_uri(bucket, "orders", DAY_1)]["rows_removed"] == len(ORDERS)
    assert status == f"masked tables in s3://{bucket}/ (Glue database {database}), latest batch {DAY_2}"


def test_status_reports_the_masked_tables_latest_batch_in_aws_mode_with_an_analysts_bucket(
    aws_locations: LakeLocations,
    analyst: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
):
    with DagsterInstance.ephemeral() as instance:
        assert warehouse_status(aws_locations, instance) is None
        for day in (DAY_2, DAY_1):  # a backfill of an older batch last: the latest batch is still DAY_2
            instance.report_runless_asset_event(AssetMaterialization(MASKED, partition=day))
        status = warehouse_status(aws_locations, instance)
        assert status == (
            f"masked tables in s3://{analyst['bucket']}/ (Glue database {analyst['database']}), latest batch {DAY_2}"
        )
        monkeypatch.delenv("INSTAREC_ANALYST_BUCKET")
        assert warehouse_status(aws_locations, instance) is None  # the local file, not built here
    report = LakeReport(home="h", batches=[], tables=[], models=[], warehouse=None, serving=None, masked=True)
    assert "warehouse: not built yet (the analyst_masked_tables asset builds it)" in report.lines()
    report = LakeReport(home="h", batches=[], tables=[], models=[], warehouse=None, serving=None)
    assert "warehouse: not built yet (the analyst_warehouse asset builds it)" in report.lines()
