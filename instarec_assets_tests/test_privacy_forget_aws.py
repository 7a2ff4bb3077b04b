"""Forgetting a shopper in aws mode, against the moto server: S3 objects rewritten through the lake's
filesystem, their noncurrent versions deleted past governance-mode Object Lock, the DynamoDB serving
store's items of every version deleted, and the audit record written to the raw bucket."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instarec_assets.backends.serving_store import DynamoDbRecommendationStore
from instarec_assets.backends.testing import recommendations_table
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.privacy.forget import ForgetError, forget_user
from instarec_assets.privacy.requests import user_hash
from instarec_assets_tests.aws_fixtures import REGION

pytestmark = pytest.mark.aws

SALT = "a-test-salt-of-enough-length"
DAY = "2025-01-06"
USER = 2


def put_parquet(locations: LakeLocations, uri: str, table: pa.Table, tmp_path: Path) -> None:
    local = tmp_path / f"{uuid.uuid4().hex}.parquet"
    pq.write_table(table, local)
    locations.filesystem.put_file(str(local), uri)


def versions(s3, uri: str) -> list[dict]:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return [
        v for v in s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []) if v["Key"] == key
    ]


def read_rows(locations: LakeLocations, uri: str) -> list[dict]:
    with locations.filesystem.open(uri, "rb") as stream:
        return pq.read_table(stream).to_pylist()


@pytest.fixture
def s3(aws_locations: LakeLocations, aws_env: str):
    """An S3 client, with the raw bucket as infra/stacks creates it: versioned, governance-mode
    retention by default."""
    client = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    client.put_bucket_versioning(
        Bucket=aws_locations.raw_bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    client.put_object_lock_configuration(
        Bucket=aws_locations.raw_bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 30}},
        },
    )
    return client


def test_forget_rewrites_s3_objects_deletes_noncurrent_versions_and_dynamodb_items(
    aws_locations: LakeLocations, aws_env: str, s3, tmp_path: Path
):
    raw_bucket = aws_locations.raw_bucket
    raw_orders = aws_locations.partition_uri("raw", "raw_orders", DAY)
    orders = pa.table(
        {
            "order_id": ["11", "12", "21", "22", "31"],
            "user_id": ["1", "1", "2", "2", "3"],
            "_raw_line": pa.array([None] * 5, pa.string()),
        }
    )
    put_parquet(aws_locations, raw_orders, orders.slice(0, 3), tmp_path)  # an earlier landing: a version
    put_parquet(aws_locations, raw_orders, orders, tmp_path)
    assert len(versions(s3, raw_orders)) == 2
    raw_lines = aws_locations.partition_uri("raw", "raw_order_products_prior", DAY)
    put_parquet(
        aws_locations,
        raw_lines,
        pa.table({"order_id": ["11", "21", "21", "22", "31"], "product_id": ["5", "6", "7", "8", "9"]}),
        tmp_path,
    )
    recommendations = aws_locations.partition_uri("consumption", "recommendations", DAY)
    put_parquet(aws_locations, recommendations, recommendations_table([1, 2, 3], ranks=3), tmp_path)
    landing = aws_locations.landing_partition_uri(DAY)
    fs = aws_locations.filesystem
    fs.pipe(f"{landing}/orders.csv", b"order_id,user_id\n11,1\n12,1\n21,2\n22,2\n31,3\n")
    fs.pipe(f"{landing}/order_products__prior.csv", b"order_id,product_id\n11,5\n21,6\n21,7\n22,8\n31,9\n")
    fs.pipe(f"{landing}/_SUCCESS", b"")

    store = DynamoDbRecommendationStore(
        f"forget-{uuid.uuid4().hex[:8]}", endpoint_url=aws_env, region_name=REGION
    )
    store.ensure_table()
    store.load(recommendations_table([1, 2, 3], tag=1, ranks=3), "model-1", batch=DAY)
    store.load(recommendations_table([1, 2, 3], tag=2, ranks=3), "model-2", batch=DAY)

    outcome = forget_user(aws_locations, USER, salt=SALT, requested_by="dpo", reason="erasure", store=store)

    assert [row["user_id"] for row in read_rows(aws_locations, raw_orders)] == ["1", "1", "3"]
    assert [row["order_id"] for row in read_rows(aws_locations, raw_lines)] == ["11", "31"]
    assert {row["user_id"] for row in read_rows(aws_locations, recommendations)} == {1, 3}
    assert fs.cat(f"{landing}/orders.csv") == b"order_id,user_id\n11,1\n12,1\n31,3\n"
    assert fs.cat(f"{landing}/order_products__prior.csv") == b"order_id,product_id\n11,5\n31,9\n"
    # the old bytes are not kept as noncurrent versions (Object Lock bypassed by the forget role)
    for uri in (raw_orders, raw_lines, f"{landing}/orders.csv", f"{landing}/order_products__prior.csv"):
        assert len(versions(s3, uri)) == 1, uri
    by_target = {item.target: item for item in outcome.record.rewritten}
    assert by_target[raw_orders].rows_removed == 2
    assert (
        by_target[raw_orders].noncurrent_versions_deleted == 2
    )  # the earlier landing's and the one replaced
    assert by_target[f"{landing}/orders.csv"].kind == "landing csv"
    # DynamoDB: the user's items of both versions gone, the others' kept
    assert store.top_k(USER) is None
    assert store.top_k(1) is not None and store.top_k(3) is not None
    assert sorted(store.stored_versions().values()) == [2, 2]  # users 1 and 3 in each version
    assert sum(item.rows_removed for item in outcome.record.rewritten if item.kind == "serving dynamodb") == 2
    # the audit record in the raw bucket's privacy prefix: a hash, not the id
    assert outcome.audit_uri.startswith(f"s3://{raw_bucket}/privacy/forget_requests/")
    record = json.loads(fs.cat(outcome.audit_uri))
    assert record["user_hash"] == user_hash(USER, SALT) and record["requested_by"] == "dpo"
    # a second forget finds nothing left
    with pytest.raises(ForgetError, match=f"user {USER} has already been forgotten"):
        forget_user(aws_locations, USER, salt=SALT, requested_by="dpo", reason="again", store=store)


def test_without_bypass_the_locked_noncurrent_version_cannot_be_deleted(aws_locations: LakeLocations, s3):
    """The retention the forget role bypasses is real: an ordinary delete of a version is refused."""
    bucket = aws_locations.raw_bucket
    first = s3.put_object(Bucket=bucket, Key="landing/x.csv", Body=b"a\n")["VersionId"]
    s3.put_object(Bucket=bucket, Key="landing/x.csv", Body=b"b\n")
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=bucket, Key="landing/x.csv", VersionId=first)
