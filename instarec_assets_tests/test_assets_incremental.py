"""The curated step updates the previous batch's features for what a batch touched, and gets the rows a
full recompute gets."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance

from instarec_assets.assets.curated import FEATURE_SET_DESCRIPTIONS
from instarec_assets.definitions import build_definitions
from instarec_assets.generate import generate_dataset
from instarec_assets.lake.feature_delta import delta_info, feature_source
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import assets_through, register_batch
from instarec_assets.sensors import LANDING_JOB_NAME

pytestmark = pytest.mark.slow


def curated_tables(locations: LakeLocations, partition: str) -> dict[str, list[tuple]]:
    """Each feature table as of `partition`, as stored (a base) or resolved (a delta chain), every row
    in order: what two runs over the same batches must agree on."""
    with duckdb.connect() as conn:
        return {
            name: conn.sql(
                f"SELECT * FROM {feature_source(conn, locations.partition_uri('curated', name, partition))} "
                "ORDER BY ALL"
            ).fetchall()
            for name in FEATURE_SET_DESCRIPTIONS
        }


def test_incremental_batches_equal_a_full_recompute(tmp_path: Path):
    summary = generate_dataset(tmp_path / "generated", users=180, seed=9, batches=3)
    locations = LakeLocations(env="local", home=str(tmp_path / "home"))
    defs = build_definitions(locations)
    job = defs.resolve_job_def(LANDING_JOB_NAME)

    def run(instance, partition: str, full_recompute: bool = False):
        register_batch(instance, partition)
        result = job.execute_in_process(
            partition_key=partition,
            instance=instance,
            asset_selection=assets_through(defs, "curated"),
            run_config={"ops": {"curated_features_step": {"config": {"full_recompute": full_recompute}}}},
        )
        metadata = instance.get_latest_materialization_event(AssetKey("training_set")).asset_materialization
        return result, metadata.metadata

    with DagsterInstance.ephemeral() as instance:
        modes = []
        for batch in summary.batches:
            target = Path(locations.landing_partition_uri(batch.partition))
            target.parent.mkdir(parents=True, exist_ok=True)
            batch.folder.rename(target)
            _, metadata = run(instance, batch.partition)
            modes.append(metadata["mode"].value)
        assert modes == ["full", "incremental", "incremental"]
        assert 0 < metadata["affected_users"].value < 180
        assert metadata["storage"].value == "delta"
        latest = summary.batches[-1].partition
        with duckdb.connect() as conn:
            info = delta_info(conn, locations.partition_uri("curated", "training_set", latest))
        assert info is not None and info.chain == tuple(batch.partition for batch in summary.batches[:2])
        assert metadata["resolved_rows"].value > metadata["dagster/row_count"].value
        incremental = curated_tables(locations, latest)

        _, metadata = run(instance, latest, full_recompute=True)
        assert metadata["mode"].value == "full" and metadata["storage"].value == "base"
        assert curated_tables(locations, latest) == incremental
