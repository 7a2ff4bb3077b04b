"""The incremental feature update on Spark equals DuckDB's full build, row for row (floats exact).

Three generated batches: DuckDB builds batch 1 whole; the Spark engine updates it to batch 2
(`run_feature_request` with `previous`, whole tables), then its own batch 2 to batch 3, on the test
run's one local session. Each result must equal the DuckDB full build of the same batch, and name the
same affected users as DuckDB's own update. A previous batch stored as feature deltas is refused by
the Spark job with one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import fsspec
import pandas as pd
import pytest

from instarec_assets.features import FeatureTables, build_features
from instarec_assets.features.full_build import FeatureBuild, FeatureRequest, run_feature_request
from instarec_assets.features.incremental import DeltaChain, PreviousFeatures
from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.staging import REQUEST_FILE
from instarec_assets_tests.test_features_generated import clean_snapshots_from_landing
from instarec_assets_tests.test_features_incremental import assert_same_tables, update_last_batch

pytest.importorskip("pyspark", reason="the spark extra is not installed")
from instarec_assets.spark.features_job import stage_features

pytestmark = pytest.mark.slow

USERS = 300


@dataclass(frozen=True)
class Runs:
    snapshots: list[CleanSnapshot]
    duck_full: list[FeatureTables]
    duck_affected: list[pd.DataFrame]  # DuckDB's own update, batches 2 and 3
    spark: list[FeatureBuild]  # batches 2 and 3


def affected(path: Path | str) -> pd.DataFrame:
    with duckdb.connect() as conn:
        return conn.execute("SELECT * FROM read_parquet(?) ORDER BY user_id", [str(path)]).df()


@pytest.fixture(scope="module")
def runs(spark_engine, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    generate = pytest.importorskip("instarec_assets.generate")
    root = tmp_path_factory.mktemp("spark_incremental")
    generate.generate_dataset(root / "landing", users=USERS, seed=5, batches=3)
    snapshots = clean_snapshots_from_landing(root / "landing", root / "lake")
    with duckdb.connect() as conn:
        duck_full = [
            build_features(conn, snapshot, root / f"full{k}") for k, snapshot in enumerate(snapshots, 1)
        ]
        duck_affected = []
        for k in (2, 3):
            previous = PreviousFeatures.from_tables(duck_full[k - 2], products=snapshots[k - 2].products)
            snapshot = snapshots[k - 1]
            result = update_last_batch(conn, snapshot, previous, root / f"duck{k}")
            duck_affected.append(affected(result.affected_user_ids.path))
    spark = []
    tables = duck_full[0]
    for k in (2, 3):
        previous = PreviousFeatures.from_tables(tables, products=snapshots[k - 2].products)
        build = run_feature_request(
            spark_engine, FeatureRequest.from_snapshot(snapshots[k - 1], str(root / f"spark{k}"), previous)
        )
        spark.append(build)
        tables = build.tables
    return Runs(snapshots, duck_full, duck_affected, spark)


@pytest.mark.parametrize("batch", [2, 3])
def test_spark_update_equals_the_duckdb_full_build(runs: Runs, batch: int) -> None:
    build = runs.spark[batch - 2]
    assert build.update is not None and build.update["affected_users"] > 0
    assert build.update["product_update"] in {"additive", "re-aggregated"}
    assert_same_tables(build.tables, runs.duck_full[batch - 1])
    pd.testing.assert_frame_equal(affected(build.affected.path), runs.duck_affected[batch - 2])


def test_spark_job_refuses_a_previous_batch_stored_as_deltas(
    runs: Runs, spark_engine, tmp_path: Path
) -> None:
    snapshots = runs.snapshots
    previous = PreviousFeatures.from_tables(runs.duck_full[0], products=snapshots[0].products)
    with duckdb.connect() as conn:
        delta = update_last_batch(
            conn, snapshots[1], previous, tmp_path / "delta", delta=DeltaChain("2025-01-13", ("2025-01-06",))
        )
    staging = tmp_path / "staging"
    staging.mkdir()
    on_delta = FeatureRequest.from_snapshot(
        snapshots[2], str(staging), PreviousFeatures.from_tables(delta.tables, products=snapshots[1].products)
    )
    with fsspec.filesystem("file").open(str(staging / REQUEST_FILE), "w") as handle:
        json.dump(on_delta.as_json(), handle)
    with pytest.raises(
        ValueError, match=r"user_features\.parquet is a feature delta: the Spark engine updates"
    ):
        stage_features(spark_engine.spark, str(staging))
