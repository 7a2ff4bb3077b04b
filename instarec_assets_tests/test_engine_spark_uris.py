"""The Spark jobs (the clean steps, the feature build) with URI inputs and a URI staging location, as
on EMR Serverless, on local disk: `file://` URIs stand in for `s3://` ones (no s3a:// connector is
installed here, and moto runs no Spark), so the code that differs on EMR (the request read and the
result written through Spark and Hadoop's FileSystem, each table's part files joined into one file
at a URI) runs for real. Over the two bad-input batches each job stages the rows the DuckDB engine stages
from plain paths.

What this cannot show: EMRFS (s3://) behaving as Hadoop's local FileSystem does for the same calls,
and EMR's Spark 3.5 running what PySpark 4 runs here (lake/spark_connection.py keeps to APIs both
have; the job never sets a master on EMR).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import duckdb
import pytest

from instarec_assets.features.build import FeatureTables
from instarec_assets.features.full_build import (
    FEATURE_TABLES,
    FeatureBuild,
    FeatureRequest,
    build_as_json,
    read_feature_result,
    run_feature_request,
    run_full_build,
    write_feature_request,
)
from instarec_assets.features.incremental import PreviousFeatures
from instarec_assets.lake.clean_steps import CleanRequest, read_result, run_clean_step, write_request
from instarec_assets.lake.duck import StagedParquet
from instarec_assets.lake.landing import ingest_landing_file
from instarec_assets.lake.schemas import LANDING_FILES
from instarec_assets.lake.staging import REQUEST_FILE, RESULT_FILE, StagingUri
from instarec_assets_tests.test_engine_parity import (
    FS,
    NOW,
    STEP_ORDER,
    assert_same_features,
    bad_landing,
    rows,
)

pytest.importorskip("pyspark", reason="the spark extra is not installed")
from instarec_assets.spark import features_job
from instarec_assets.spark.clean_job import parse_arguments, stage_clean

pytestmark = pytest.mark.slow


def _path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def spark(spark_engine):
    """The test run's one local session (spark_fixtures.py): a module's own would be the same
    session (getOrCreate), and stopping it would stop it for every later engine test."""
    return spark_engine.spark


def test_job_arguments_name_the_staging_and_no_master_on_a_cluster() -> None:
    on_emr = parse_arguments(["--staging", "s3://clean/emr-staging/r-clean_orders"])
    assert on_emr.staging == "s3://clean/emr-staging/r-clean_orders" and on_emr.master is None
    assert parse_arguments(["--staging", "/tmp/s", "--master", "local[2]"]).master == "local[2]"
    features = features_job.parse_arguments(["--staging", "s3://clean/emr-staging/r-curated"])
    assert (features.staging, features.master) == ("s3://clean/emr-staging/r-curated", None)


def _raw_tables(duck: duckdb.DuckDBPyConnection, folder: Path, root: Path) -> dict[str, str]:
    """One landing batch ingested into raw parquet files, by raw table name."""
    return {
        f"raw_{table}": str(
            ingest_landing_file(duck, FS, str(folder), spec, root / "raw" / folder.name, NOW).staged.path
        )
        for table, spec in LANDING_FILES.items()
    }


def _step_inputs(table: str, raw: dict[str, str], ran: dict, orders_history: list[str], as_uri) -> dict:
    """A clean step's inputs: its raw tables (as `as_uri` gives them) and the clean tables it reads."""
    inputs = {name: as_uri(uri) for name, uri in raw.items() if name.startswith(f"raw_{table}")}
    if table == "products":
        inputs |= {
            "clean_aisles": str(ran["aisles"].clean.path),
            "clean_departments": str(ran["departments"].clean.path),
        }
    if table == "order_products":
        inputs |= {
            "clean_orders": [*orders_history, str(ran["orders"].clean.path)],
            "clean_products": str(ran["products"].clean.path),
            "quarantined_orders": str(ran["orders"].quarantine.path),
        }
    return inputs


def test_job_with_uri_inputs_and_staging_stages_what_duckdb_stages(spark, tmp_path: Path) -> None:
    duck = duckdb.connect()
    history: dict[str, dict[str, list[str]]] = {"duckdb": {}, "spark": {}}
    for folder in bad_landing(tmp_path / "landing"):
        day = folder.name
        raw = _raw_tables(duck, folder, tmp_path)
        done: dict[str, dict] = {"duckdb": {}, "spark": {}}
        for table in STEP_ORDER:
            for engine in ("duckdb", "spark"):
                as_uri = (lambda path: f"file://{path}") if engine == "spark" else str
                ran = done[engine]
                inputs = _step_inputs(table, raw, ran, history[engine].get("orders", []), as_uri)
                staging = tmp_path / engine / day / table
                request = CleanRequest(
                    table=table,
                    partition_date=day,
                    staging=str(staging),
                    inputs=inputs,
                    history=tuple(history[engine].get(table, [])),
                )
                if engine == "duckdb":
                    ran[table] = run_clean_step(duck, request)
                    continue
                staging.mkdir(parents=True)  # a local disk has folders; S3 has none to make
                request = replace(request, staging=f"file://{staging}")
                write_request(FS, request)
                _, staged = stage_clean(spark, request.staging)
                # what the asset reads back is what the job staged, at URIs in the staging location
                assert read_result(FS, request.staging) == staged
                assert staged.clean.path == StagingUri(f"file://{staging}/clean_{table}.parquet")
                assert staged.quarantine.path == StagingUri(f"file://{staging}/quarantined_{table}.parquet")
                visible = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
                assert visible == sorted(
                    [REQUEST_FILE, RESULT_FILE, f"clean_{table}.parquet", f"quarantined_{table}.parquet"]
                ), table
                assert json.loads((staging / RESULT_FILE).read_text())["clean_rows"] == staged.clean.row_count
                ran[table] = staged
            on_duckdb, on_spark = done["duckdb"][table], done["spark"][table]
            assert on_spark.accounting == on_duckdb.accounting, (day, table)
            assert on_spark.outcome_counts == on_duckdb.outcome_counts, (day, table)
            assert rows(duck, _path(str(on_spark.clean.path))) == rows(duck, on_duckdb.clean.path), table
            assert rows(duck, _path(str(on_spark.quarantine.path))) == rows(duck, on_duckdb.quarantine.path)
        for engine in ("duckdb", "spark"):
            for table, result in done[engine].items():
                history[engine].setdefault(table, []).append(str(result.clean.path))
    # the second batch read its history (file:// URIs) and found duplicates of the first
    assert done["spark"]["orders"].accounting.raw_rows > 0
    assert history["spark"]["orders"][0].startswith("file://")


def test_staged_request_must_name_the_staging_it_sits_in(spark, tmp_path: Path) -> None:
    staging = tmp_path / "elsewhere"
    staging.mkdir()
    (tmp_path / "other").mkdir()
    write_request(FS, CleanRequest("aisles", "2025-01-06", str(tmp_path / "other"), {"raw_aisles": "x"}))
    (tmp_path / "other" / REQUEST_FILE).rename(staging / REQUEST_FILE)
    with pytest.raises(
        ValueError, match=f"{REQUEST_FILE} at file://.*elsewhere stages to .*other, not there"
    ):
        stage_clean(spark, f"file://{staging}")


def _clean_zone_on_duckdb(duck: duckdb.DuckDBPyConnection, root: Path) -> dict[str, list[str]]:
    """The two bad-input batches cleaned on DuckDB: each clean table's files, oldest first."""
    history: dict[str, list[str]] = {}
    for folder in bad_landing(root / "landing"):
        raw, done = _raw_tables(duck, folder, root), {}
        for table in STEP_ORDER:
            inputs = _step_inputs(table, raw, done, history.get("orders", []), str)
            request = CleanRequest(
                table,
                folder.name,
                str(root / "clean" / folder.name / table),
                inputs,
                tuple(history.get(table, [])),
            )
            done[table] = run_clean_step(duck, request)
        for table, result in done.items():
            history.setdefault(table, []).append(str(result.clean.path))
    return history


def _feature_request(history: dict[str, list[str]], staging: str, as_uri) -> FeatureRequest:
    return FeatureRequest(
        orders=tuple(as_uri(path) for path in history["orders"]),
        order_products=tuple(as_uri(path) for path in history["order_products"]),
        products=as_uri(history["products"][-1]),
        aisles=as_uri(history["aisles"][-1]),
        departments=as_uri(history["departments"][-1]),
        staging=staging,
    )


def _on_disk(staged: StagedParquet) -> StagedParquet:
    return StagedParquet(_path(str(staged.path)), staged.row_count)


def test_features_job_with_uri_inputs_and_staging_stages_what_duckdb_builds(spark, tmp_path: Path) -> None:
    duck = duckdb.connect()
    history = _clean_zone_on_duckdb(duck, tmp_path)
    on_duckdb = run_full_build(duck, _feature_request(history, str(tmp_path / "duckdb"), str))

    staging = tmp_path / "spark"
    staging.mkdir()  # a local disk has folders; S3 has none to make
    request = _feature_request(history, f"file://{staging}", lambda path: f"file://{path}")
    write_feature_request(FS, request)
    report = features_job.stage_features(spark, request.staging)

    # what the asset reads back is what the job staged, at URIs in the staging location
    staged = read_feature_result(FS, request.staging)
    assert build_as_json(staged) == report
    assert staged.tables.user_features.path == StagingUri(f"file://{staging}/user_features.parquet")
    assert staged.affected.path == StagingUri(f"file://{staging}/affected_users.parquet")
    visible = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
    assert visible == sorted(
        [REQUEST_FILE, RESULT_FILE, "affected_users.parquet", *(f"{name}.parquet" for name in FEATURE_TABLES)]
    )
    assert json.loads((staging / RESULT_FILE).read_text())["training_set"]["rows"] > 0
    on_spark = FeatureBuild(
        tables=FeatureTables(**{name: _on_disk(getattr(staged.tables, name)) for name in FEATURE_TABLES}),
        affected=_on_disk(staged.affected),
    )
    assert_same_features(duck, {"duckdb": on_duckdb, "spark": on_spark})
    # the build read both batches of the history (file:// URIs)
    assert len(request.orders) == 2 and request.orders[0].startswith("file://")


def test_features_request_must_name_the_staging_it_sits_in(spark, tmp_path: Path) -> None:
    staging = tmp_path / "elsewhere"
    staging.mkdir()
    (tmp_path / "other").mkdir()
    write_feature_request(FS, FeatureRequest((), (), "p", "a", "d", str(tmp_path / "other")))
    (tmp_path / "other" / REQUEST_FILE).rename(staging / REQUEST_FILE)
    with pytest.raises(
        ValueError, match=f"{REQUEST_FILE} at file://.*elsewhere stages to .*other, not there"
    ):
        features_job.stage_features(spark, f"file://{staging}")


def test_features_job_updates_the_previous_batch_at_uris_as_duckdb_does(spark, tmp_path: Path) -> None:
    """The update request (batch 1's whole tables as `previous`) at file:// URIs: the job stages the
    tables and affected users DuckDB's update of the same request from plain paths gives."""
    duck = duckdb.connect()
    history = _clean_zone_on_duckdb(duck, tmp_path)
    first = {name: paths[:1] for name, paths in history.items()}
    batch_1 = run_full_build(duck, _feature_request(first, str(tmp_path / "duckdb1"), str))
    previous = PreviousFeatures.from_tables(batch_1.tables, products=history["products"][0])
    on_duckdb = run_feature_request(
        duck, replace(_feature_request(history, str(tmp_path / "duckdb2"), str), previous=previous)
    )

    staging = tmp_path / "spark"
    staging.mkdir()
    as_uri = lambda path: f"file://{path}"  # noqa: E731
    at_uris = PreviousFeatures(**{name: as_uri(uri) for name, uri in asdict(previous).items()})
    request = replace(_feature_request(history, f"file://{staging}", as_uri), previous=at_uris)
    write_feature_request(FS, request)
    report = features_job.stage_features(spark, request.staging)

    staged = read_feature_result(FS, request.staging)
    assert staged.update == report["update"]
    assert staged.update["affected_users"] == on_duckdb.update["affected_users"] > 0
    assert staged.tables.training_set.path == StagingUri(f"file://{staging}/training_set.parquet")
    on_spark = FeatureBuild(
        tables=FeatureTables(**{name: _on_disk(getattr(staged.tables, name)) for name in FEATURE_TABLES}),
        affected=_on_disk(staged.affected),
    )
    assert_same_features(duck, {"duckdb": on_duckdb, "spark": on_spark})
