"""aws mode: the same assets with each zone in its own S3 bucket, against a moto server on 127.0.0.1."""

from __future__ import annotations

import io

import boto3
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, SkipReason, build_sensor_context

from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeConfigError, LakeLocations
from instarec_assets.pipeline.runner import land_folder, mark_complete, materialize_partition
from instarec_assets.sensors import landing_sensor
from instarec_assets_tests.aws_fixtures import REGION
from instarec_assets_tests.landing_fixtures import (
    ORDERS,
    PRIOR_LINES,
    TRAIN_LINES,
    write_batch,
    write_small_products,
)

pytestmark = pytest.mark.aws
DAY_1 = "2025-01-06"


def _read_parquet(endpoint: str, bucket: str, key: str):
    body = boto3.client("s3", endpoint_url=endpoint, region_name=REGION).get_object(Bucket=bucket, Key=key)[
        "Body"
    ]
    return pq.read_table(io.BytesIO(body.read()))


def test_partition_is_written_to_zone_buckets_in_the_seed_layout(
    aws_locations: LakeLocations, aws_env: str, tmp_path
):
    land_folder(write_batch(tmp_path / "batch", success=False), aws_locations, DAY_1)
    with DagsterInstance.ephemeral() as instance:
        reports = materialize_partition(build_definitions(aws_locations), instance, DAY_1, through="clean")

    rows = {report.asset: report.rows for report in reports}
    assert rows["clean_orders"] == len(ORDERS)
    assert rows["clean_order_products"] == len(PRIOR_LINES) + len(TRAIN_LINES)
    key = "clean_orders/year=2025/month=01/day=06/clean_orders.parquet"
    table = _read_parquet(aws_env, aws_locations.clean_bucket, key)
    assert sorted(table.column("order_id").to_pylist()) == sorted(order[0] for order in ORDERS)
    raw = _read_parquet(
        aws_env, aws_locations.raw_bucket, "raw_orders/year=2025/month=01/day=06/raw_orders.parquet"
    )
    assert (
        raw.column("_source_file")[0].as_py() == f"s3://{aws_locations.raw_bucket}/landing/{DAY_1}/orders.csv"
    )
    listed = boto3.client("s3", endpoint_url=aws_env, region_name=REGION).list_objects_v2(
        Bucket=aws_locations.clean_bucket, Prefix="clean_orders/"
    )
    assert [entry["Key"] for entry in listed["Contents"]] == [key]  # one object per partition, no temporaries


def test_landing_sensor_reads_the_raw_buckets_landing_prefix(aws_locations: LakeLocations, tmp_path):
    """A landed copy is a complete batch for the sensor only once marked so (`_SUCCESS`)."""
    land_folder(write_batch(tmp_path / "batch", success=False), aws_locations, DAY_1)
    defs = build_definitions(aws_locations)
    with DagsterInstance.ephemeral() as instance:

        def evaluate():
            with build_sensor_context(
                instance=instance,
                repository_def=defs.get_repository_def(),
                resources={"lake": defs.resources["lake"]},
            ) as context:
                return landing_sensor(context)

        assert isinstance(evaluate(), SkipReason)
        mark_complete(aws_locations, DAY_1)
        result = evaluate()
    assert [request.partition_key for request in result.run_requests] == [DAY_1]


def test_aws_mode_without_buckets_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INSTAREC_ENV", "aws")
    for zone in ("RAW", "CLEAN", "CURATED", "CONSUMPTION"):
        monkeypatch.delenv(f"INSTAREC_{zone}_BUCKET", raising=False)
    with pytest.raises(LakeConfigError, match="INSTAREC_RAW_BUCKET must be set"):
        LakeLocations.from_env()


@pytest.mark.slow
def test_whole_pipeline_in_aws_mode_loads_dynamodb(
    aws_locations: LakeLocations, aws_env: str, tmp_path, monkeypatch
):
    from instarec_assets.backends.serving_store import DynamoDbRecommendationStore
    from instarec_assets.generate import generate_dataset

    table_name = f"instarec-test-recommendations-{aws_locations.raw_bucket.rsplit('-', 1)[-1]}"
    monkeypatch.setenv("INSTAREC_DYNAMODB_TABLE", table_name)
    monkeypatch.setenv("INSTAREC_TRAINING_BACKEND", "local")
    store = DynamoDbRecommendationStore(table_name, region_name=REGION, endpoint_url=aws_env)
    store.ensure_table()
    # A tenth of the catalog: the assertions are about where the pipeline writes, not its scale.
    products = write_small_products(tmp_path / "products.csv")
    batch = generate_dataset(tmp_path / "generated", users=150, seed=5, products_file=products).batches[0]
    land_folder(batch.folder, aws_locations, batch.partition)
    with DagsterInstance.ephemeral() as instance:
        reports = materialize_partition(build_definitions(aws_locations), instance, batch.partition)

    assert {"xgboost_model", "recommendations", "dynamodb_recommendations"} <= {r.asset for r in reports}
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    model_keys = {
        entry["Key"]
        for entry in s3.list_objects_v2(Bucket=aws_locations.curated_bucket, Prefix="models/xgboost_model/")[
            "Contents"
        ]
    }
    assert "models/xgboost_model/year=2025/month=01/day=06/model.json" in model_keys
    assert "models/xgboost_model/year=2025/month=01/day=06/model_card.json" in model_keys
    recommendations = _read_parquet(
        aws_env,
        aws_locations.consumption_bucket,
        "recommendations/year=2025/month=01/day=06/recommendations.parquet",
    ).to_pandas()
    first_user = int(recommendations.user_id.min())
    served = store.top_k(first_user, 3)
    expected = (
        recommendations[recommendations.user_id == first_user].sort_values("rank").product_id.tolist()[:3]
    )
    assert [item.product_id for item in served.items] == expected
