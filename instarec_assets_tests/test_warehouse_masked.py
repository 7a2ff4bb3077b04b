"""aws mode: the analysts' masked tables on S3 and in Glue, against the moto server on 127.0.0.1
(S3, Secrets Manager and Glue through real boto3 and s3fs HTTP)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance

from instarec_assets.assets.warehouse import WAREHOUSE_INS
from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeConfigError, LakeLocations
from instarec_assets.pipeline.runner import assets_through, land_folder, register_batch
from instarec_assets.privacy.forget import clean_zone_as_of
from instarec_assets.sensors import LANDING_JOB_NAME
from instarec_assets.warehouse import build_warehouse_file, run_readonly_sql, user_key, warehouse_path
from instarec_assets.warehouse.masked import (
    AS_OF_PARAMETER,
    INFO_TABLE,
    MASKED_TABLES,
    MaskedCatalogError,
    catalog_as_of,
    glue_client,
    hive_type,
    masked_table_location,
    masked_table_uri,
)
from instarec_assets.warehouse.salt import SALT_ENV, WarehouseSaltError, load_salt, load_salt_from_secret
from instarec_assets_tests.aws_fixtures import REGION
from instarec_assets_tests.landing_fixtures import ORDERS, write_batch

pytestmark = pytest.mark.aws
DAY_1 = "2025-01-06"
DAY_2 = "2025-01-13"
SALT = "salt-from-secrets-manager-0123456789"
MASKED = AssetKey("analyst_masked_tables")
WAREHOUSE = AssetKey("analyst_warehouse")
# A landed order whose user id is not a number: quarantined, and its raw user id must never be shown.
BAD_ORDER = (301, "u77321", "prior", 1, 2, 8, "")


@pytest.fixture
def analyst(aws_locations: LakeLocations, aws_env: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The analysts' bucket, Glue database and salt secret, as the analytics and orchestration stacks make them."""
    suffix = uuid.uuid4().hex[:8]
    names = {
        "bucket": f"instarec-test-analyst-{suffix}",
        "database": f"instarec_test_analyst_{suffix}",
        "secret": f"instarec/test-{suffix}/warehouse-salt",
    }
    boto3.client("s3", endpoint_url=aws_env, region_name=REGION).create_bucket(Bucket=names["bucket"])
    boto3.client("glue", endpoint_url=aws_env, region_name=REGION).create_database(
        DatabaseInput={"Name": names["database"]}
    )
    secrets = boto3.client("secretsmanager", endpoint_url=aws_env, region_name=REGION)
    names["secret_arn"] = secrets.create_secret(Name=names["secret"], SecretString=SALT)["ARN"]
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.setenv("INSTAREC_ANALYST_BUCKET", names["bucket"])
    monkeypatch.setenv("INSTAREC_ANALYST_DATABASE", names["database"])
    monkeypatch.setenv("INSTAREC_WAREHOUSE_SALT_SECRET", names["secret_arn"])
    return names


def run_partition(locations: LakeLocations, instance, partition_key: str, folder: Path):
    """Land a folder, then raw, clean and the masked tables for its partition."""
    land_folder(folder, locations, partition_key)
    defs = build_definitions(locations)
    register_batch(instance, partition_key)
    result = defs.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
        partition_key=partition_key,
        instance=instance,
        asset_selection=[*assets_through(defs, "clean"), MASKED],
    )
    assert result.success
    event = instance.get_latest_materialization_event(MASKED)
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def s3_table(endpoint: str, uri: str):
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = boto3.client("s3", endpoint_url=endpoint, region_name=REGION).get_object(Bucket=bucket, Key=key)
    return pq.read_table(io.BytesIO(body["Body"].read()))


def _rows(table) -> list[tuple]:
    columns = table.to_pydict()
    return sorted(zip(*columns.values(), strict=True), key=repr)


@pytest.mark.slow
def test_masked_tables_equal_a_local_warehouse_hold_no_user_id_and_glue_points_at_them(
    aws_locations: LakeLocations, aws_env: str, analyst: dict[str, str], tmp_path
):
    folder = write_batch(tmp_path / "batch", orders=[*ORDERS, BAD_ORDER])
    with DagsterInstance.ephemeral() as instance:
        metadata = run_partition(aws_locations, instance, DAY_1, folder)

    assert metadata["published"] is True and metadata["as_of"] == DAY_1
    assert metadata["user_key_salt"] == f"Secrets Manager secret {analyst['secret_arn']}"
    assert metadata["glue_database"] == analyst["database"]
    assert SALT not in str(metadata)

    # The same relations built into a local file from the same clean zone and salt.
    local = warehouse_path(tmp_path / "local")
    assert not warehouse_path(aws_locations.home_path).exists()  # built once: no /tmp copy
    snapshot, quarantine = clean_zone_as_of(aws_locations, DAY_1)
    build_warehouse_file(
        local, snapshot, SALT, DAY_1, filesystem=aws_locations.filesystem, quarantine=quarantine
    )
    for table in MASKED_TABLES:
        masked = s3_table(aws_env, masked_table_uri(analyst["bucket"], table, DAY_1))
        assert "user_id" not in masked.column_names, table
        expected = run_readonly_sql(local, f"SELECT * FROM {table}")
        assert tuple(masked.column_names) == expected.columns, table
        if table == INFO_TABLE:  # built_at is each build's own clock
            assert masked.column("as_of").to_pylist()[0].isoformat() == DAY_1
            assert masked.column("salt_check").to_pylist() == [row[-1] for row in expected.rows]
            continue
        assert _rows(masked) == sorted(expected.rows, key=repr), table

    orders = s3_table(aws_env, masked_table_uri(analyst["bucket"], "orders", DAY_1)).to_pydict()
    keys = dict(zip(orders["order_id"], orders["user_key"], strict=True))
    assert keys == {order[0]: user_key(order[1], SALT) for order in ORDERS}
    quarantine = s3_table(aws_env, masked_table_uri(analyst["bucket"], "quarantine", DAY_1)).to_pydict()
    assert quarantine["source_table"] == ["orders"]

    # Nothing in the analysts' bucket carries a raw user id or the salt.
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    objects = s3.list_objects_v2(Bucket=analyst["bucket"])["Contents"]
    assert len(objects) == len(MASKED_TABLES)
    for entry in objects:
        body = s3.get_object(Bucket=analyst["bucket"], Key=entry["Key"])["Body"].read()
        assert SALT.encode() not in body and BAD_ORDER[1].encode() not in body, entry["Key"]

    glue = boto3.client("glue", endpoint_url=aws_env, region_name=REGION)
    tables = {t["Name"]: t for t in glue.get_tables(DatabaseName=analyst["database"])["TableList"]}
    assert set(tables) == set(MASKED_TABLES)
    for name, table in tables.items():
        storage = table["StorageDescriptor"]
        assert storage["Location"] == masked_table_location(analyst["bucket"], name, DAY_1)
        assert storage["Location"].startswith(f"s3://{analyst['bucket']}/{name}/")
        assert storage["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
        assert "user_id" not in {c["Name"] for c in storage["Columns"]}, name
        assert table["Parameters"][AS_OF_PARAMETER] == DAY_1
    columns = {c["Name"]: c["Type"] for c in tables["orders"]["StorageDescriptor"]["Columns"]}
    assert columns["user_key"] == "string" and columns["order_id"] == "int"


@pytest.mark.slow
def test_a_later_partition_moves_the_catalog_and_a_backfill_leaves_it(
    aws_locations: LakeLocations, aws_env: str, analyst: dict[str, str], tmp_path
):
    glue = glue_client(REGION, aws_env)
    with DagsterInstance.ephemeral() as instance:
        run_partition(aws_locations, instance, DAY_1, write_batch(tmp_path / "day1"))
        later = write_batch(
            tmp_path / "day2", orders=[(105, 1, "test", 5, 2, 9, "6.0")], prior_lines=[], train_lines=[]
        )
        run_partition(aws_locations, instance, DAY_2, later)
        assert catalog_as_of(glue, analyst["database"]) == DAY_2
        orders = glue.get_table(DatabaseName=analyst["database"], Name="orders")["Table"]
        assert orders["StorageDescriptor"]["Location"] == masked_table_location(
            analyst["bucket"], "orders", DAY_2
        )
        rows = s3_table(aws_env, masked_table_uri(analyst["bucket"], "orders", DAY_2)).num_rows
        assert rows == len(ORDERS) + 1  # a snapshot of every partition up to DAY_2

        metadata = run_partition(aws_locations, instance, DAY_1, write_batch(tmp_path / "day1-again"))
    assert metadata["published"] is False
    assert metadata["kept"] == f"the catalog shows {DAY_2}, newer than {DAY_1}: kept it"
    assert catalog_as_of(glue, analyst["database"]) == DAY_2


def test_the_masked_asset_replaces_the_local_warehouse_only_in_aws_mode_with_an_analyst_bucket(
    aws_locations: LakeLocations, analyst: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    graph = build_definitions(aws_locations).resolve_asset_graph()
    node = graph.get(MASKED)
    assert node.group_name == "consumption" and node.kinds == {"s3", "glue"}
    assert node.partitions_def is not None
    assert {key.to_user_string() for key in node.parent_keys} == set(WAREHOUSE_INS)
    assert WAREHOUSE not in graph.get_all_asset_keys()  # its file would be built on /tmp and lost

    monkeypatch.delenv("INSTAREC_ANALYST_DATABASE")
    with pytest.raises(LakeConfigError, match="INSTAREC_ANALYST_DATABASE must be set"):
        build_definitions(aws_locations)
    monkeypatch.delenv("INSTAREC_ANALYST_BUCKET")
    keys = build_definitions(aws_locations).resolve_asset_graph().get_all_asset_keys()
    assert MASKED not in keys and WAREHOUSE in keys
    local = LakeLocations(home=str(aws_locations.home_path))
    monkeypatch.setenv("INSTAREC_ANALYST_BUCKET", analyst["bucket"])
    keys = build_definitions(local).resolve_asset_graph().get_all_asset_keys()
    assert MASKED not in keys and WAREHOUSE in keys


def test_a_missing_secret_or_database_is_one_line_naming_it(aws_env: str, analyst: dict[str, str]):
    with pytest.raises(WarehouseSaltError) as error:
        load_salt_from_secret("instarec/nowhere/warehouse-salt", REGION, aws_env)
    assert str(error.value) == (
        "INSTAREC_WAREHOUSE_SALT_SECRET instarec/nowhere/warehouse-salt: cannot read the warehouse salt "
        "(ResourceNotFoundException)"
    )
    salt = load_salt_from_secret(analyst["secret"], REGION, aws_env)
    assert salt.value == SALT and SALT not in repr(salt)

    with pytest.raises(MaskedCatalogError) as error:
        catalog_as_of(glue_client(REGION, aws_env), "instarec_nowhere_analyst")
    assert str(error.value) == (
        "INSTAREC_ANALYST_DATABASE instarec_nowhere_analyst: no such Glue database (deploy the analytics stack)"
    )
    assert catalog_as_of(glue_client(REGION, aws_env), analyst["database"]) is None


def test_in_aws_mode_the_secret_wins_and_locally_it_is_ignored(
    aws_locations: LakeLocations, analyst: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(SALT_ENV, "salt-from-the-environment-0123")
    salt = load_salt(aws_locations.home_path)
    assert salt.value == SALT and salt.source == f"Secrets Manager secret {analyst['secret_arn']}"
    monkeypatch.setenv("INSTAREC_ENV", "local")
    assert load_salt(aws_locations.home_path).value == "salt-from-the-environment-0123"


def test_glue_types_of_the_warehouse_columns():
    assert hive_type("VARCHAR", "orders", "user_key") == "string"
    assert hive_type("TIMESTAMP WITH TIME ZONE", INFO_TABLE, "built_at") == "timestamp"
    assert hive_type("DECIMAL(18,3)", "t", "c") == "decimal(18,3)"
    with pytest.raises(MaskedCatalogError, match=r"^t\.c: no Glue type for DuckDB type STRUCT\(a INTEGER\)$"):
        hive_type("STRUCT(a INTEGER)", "t", "c")
