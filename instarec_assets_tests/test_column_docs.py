"""Every column of every lake table carries a description in its `dagster/column_schema`: a generated
batch is materialised through every asset with the real definitions, and each materialisation's
schema is read back from the instance."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, TableSchema

from instarec_assets.column_docs import SHARED, TABLES, column_description
from instarec_assets.definitions import build_definitions
from instarec_assets.generate import generate_dataset
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import register_batch
from instarec_assets.sensors import LANDING_JOB_NAME

RUN_CONFIG = {"ops": {"graphsage_step": {"config": {"epochs": 2, "device": "cpu"}}}}


def test_a_tables_own_description_wins_over_the_shared_one() -> None:
    assert column_description("clean_order_products", "eval_set").startswith("the file the line came from")
    assert column_description("clean_orders", "eval_set") == SHARED["eval_set"]
    assert (
        column_description("raw_orders", "order_dow")
        == "day of week the order was placed (0-6) (as landed, text)"
    )
    assert column_description("training_set", "up_streak") == SHARED["up_streak"]
    assert column_description("clean_orders", "no_such_column") is None


@pytest.mark.slow
def test_every_column_of_every_lake_table_is_described(tmp_path: Path) -> None:
    summary = generate_dataset(tmp_path / "generated", users=160, seed=5, batches=1)
    (batch,) = summary.batches
    locations = LakeLocations(env="local", home=str(tmp_path / "home"))
    target = Path(locations.landing_partition_uri(batch.partition))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(batch.folder, target_is_directory=True)
    defs = build_definitions(locations)
    with DagsterInstance.ephemeral() as instance:
        register_batch(instance, batch.partition)
        result = defs.resolve_job_def(LANDING_JOB_NAME).execute_in_process(
            partition_key=batch.partition, instance=instance, run_config=RUN_CONFIG, raise_on_error=False
        )
        assert result.success
        schemas: dict[str, TableSchema] = {}
        for event in result.get_asset_materialization_events():
            metadata = event.step_materialization_data.materialization.metadata
            if "dagster/column_schema" in metadata:
                schemas[event.asset_key.to_user_string()] = metadata["dagster/column_schema"].value

    # Every parquet table of the lake reported its schema (none bypassed the IO manager's metadata).
    lake_tables = {
        path.relative_to(locations.home_path / "lake").parts[1]
        for path in (locations.home_path / "lake").rglob("*.parquet")
        if "models" not in path.parts
    }
    assert lake_tables == set(schemas)
    undescribed = [
        f"{table}.{column.name}"
        for table, schema in schemas.items()
        for column in schema.columns
        if not column.description
    ]
    assert undescribed == []
    # column_docs names exactly the lake's tables: a new table gets an entry, a removed one loses it.
    assert set(TABLES) == set(schemas), set(TABLES) ^ set(schemas)
    recommendations = {column.name: column.description for column in schemas["recommendations"].columns}
    assert recommendations["explore"] == TABLES["recommendations"]["explore"]
