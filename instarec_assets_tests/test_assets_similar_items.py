"""The similar_items asset through Dagster: its held-out blend choice, lineage and metadata report.

The clean zone and the product embeddings are written as real parquet at their lake partitions
(the hand-built world of test_consumption_similar_blend), and only similar_items is materialised.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetKey, DagsterInstance, materialize

from instarec_assets.definitions import build_definitions, build_resources
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.graphsage.artifacts import embeddings_table
from instarec_assets.pipeline.runner import register_batch
from instarec_assets_tests.test_consumption_similar_blend import (
    DISCONTINUED,
    baskets_by_user,
    clustered_embeddings,
    write_lake,
)

DAY = "2025-01-06"
SIMILAR = AssetKey("similar_items")
COUNTS = AssetKey("similar_item_counts")


def land(locations: LakeLocations, folder: Path) -> None:
    """The hand-built tables at the clean and curated partitions the asset reads."""
    lake = write_lake(folder, baskets_by_user(fit_orders=2, users_per_group=3, seed=11))
    for table, source in (
        ("clean_orders", lake["orders"][0]),
        ("clean_order_products", lake["lines"][0]),
        ("clean_products", lake["products"]),
        ("clean_aisles", lake["aisles"]),
        ("clean_departments", lake["departments"]),
    ):
        target = Path(locations.partition_uri("clean", table, DAY))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    table = clustered_embeddings()
    target = Path(locations.partition_uri("curated", "product_embeddings", DAY))
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.concat_tables(
            [
                embeddings_table(framing, "product_id", table.ids, table.vectors)
                for framing in ("target", "serving")
            ]
        ),
        target,
    )


def test_similar_items_asset_chooses_the_blend_and_reports_it(tmp_path: Path) -> None:
    locations = LakeLocations(env="local", home=str(tmp_path / "home"))
    land(locations, tmp_path / "world")
    defs = build_definitions(locations)
    graph = defs.resolve_asset_graph()
    assert AssetKey("product_embeddings") in graph.get(SIMILAR).parent_keys  # lineage in the UI
    with DagsterInstance.ephemeral() as instance:
        register_batch(instance, DAY)
        result = materialize(
            list(defs.assets),
            instance=instance,
            partition_key=DAY,
            resources=build_resources(locations),
            selection=[SIMILAR, COUNTS],
        )
        assert result.success
        [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == SIMILAR]
    metadata = {name: value.value for name, value in event.materialization.metadata.items()}
    columns = metadata["dagster/column_schema"].columns
    assert {column.name for column in columns} >= {"score", "cooccurrence", "similarity", "together"}
    assert [column.name for column in columns if not column.description] == []
    assert metadata["blend_weight"] > 0
    assert metadata["coverage@10"] > 0.9 and metadata["embedding_filled_pairs"] > 0
    report = metadata["evaluation"]
    assert report.splitlines()[0].split("|")[1:-1] == [
        " method        ",
        "   weight ",
        " chosen   ",
        "   hit_rate@10 ",
        "   recall@10 ",
        "   coverage@10 ",
    ]
    assert "| co-occurrence |" in report and "| embeddings    |" in report
    detail = metadata["evaluation_detail"]
    assert detail["chosen_weight"] == metadata["blend_weight"] and detail["held_out_orders"] == 24
    assert metadata["history_read"] == {"clean_orders": [DAY], "clean_order_products": [DAY]}
    uri = locations.partition_uri("consumption", "similar_items", DAY)
    products, selves, discontinued = duckdb.sql(
        f"SELECT count(DISTINCT product_id), count(*) FILTER (WHERE product_id = similar_product_id), "
        f"count(*) FILTER (WHERE {DISCONTINUED} IN (product_id, similar_product_id)) "
        f"FROM read_parquet('{uri}', hive_partitioning = false)"
    ).fetchall()[0]
    assert (products, selves, discontinued) == (40, 0, 0)
    assert metadata["pairs"] == duckdb.sql(f"SELECT count(*) FROM read_parquet('{uri}')").fetchall()[0][0]
    assert np.isclose(
        metadata["mean_score"], duckdb.sql(f"SELECT avg(score) FROM read_parquet('{uri}')").fetchall()[0][0]
    )
