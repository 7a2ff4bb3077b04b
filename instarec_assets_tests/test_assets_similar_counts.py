"""similar_items over two batches through Dagster: the second batch updates the first batch's stored
counts (late lines of a first-batch order included), carries the blend weight while the GraphSAGE
model is kept, and gives the same table as a full recount."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetKey, AssetMaterialization, DagsterInstance, MetadataValue, materialize

from instarec_assets.definitions import build_definitions, build_resources
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.ml.graphsage.artifacts import embeddings_table
from instarec_assets.pipeline.runner import register_batch
from instarec_assets_tests.test_consumption_similar_blend import (
    baskets_by_user,
    clustered_embeddings,
    write_lake,
)

DAYS = ("2025-01-06", "2025-01-13")
SIMILAR, COUNTS = AssetKey("similar_items"), AssetKey("similar_item_counts")


def _write(target: Path, sql: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    duckdb.sql(f"COPY ({sql}) TO '{target}' (FORMAT parquet)")


def land_two_batches(locations: LakeLocations, folder: Path) -> None:
    """The hand-built world split in two batches by order id; the last line of each of three
    first-batch orders arrives in the second batch (a late line)."""
    lake = write_lake(folder, baskets_by_user(fit_orders=3, users_per_group=3, seed=11))
    orders, lines = lake["orders"][0], lake["lines"][0]
    [(half,)] = duckdb.sql(f"SELECT max(order_id) // 2 FROM '{orders}'").fetchall()
    late = "(order_id IN (1, 2, 3) AND add_to_cart_order = 3)"
    first = f"order_id <= {half} AND NOT {late}"
    for day, keep_orders, keep_lines in (
        (DAYS[0], f"order_id <= {half}", first),
        (DAYS[1], f"order_id > {half}", f"NOT ({first})"),
    ):
        _write(
            Path(locations.partition_uri("clean", "clean_orders", day)),
            f"SELECT * FROM '{orders}' WHERE {keep_orders}",
        )
        _write(
            Path(locations.partition_uri("clean", "clean_order_products", day)),
            f"SELECT * FROM '{lines}' WHERE {keep_lines}",
        )
        for table in ("products", "aisles", "departments"):
            target = Path(locations.partition_uri("clean", f"clean_{table}", day))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(lake[table], target)
        table = clustered_embeddings()
        target = Path(locations.partition_uri("curated", "product_embeddings", day))
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.concat_tables(
                [embeddings_table(f, "product_id", table.ids, table.vectors) for f in ("target", "serving")]
            ),
            target,
        )


def _materialize(defs, locations, instance, day, config=None):
    result = materialize(
        list(defs.assets),
        instance=instance,
        partition_key=day,
        resources=build_resources(locations),
        selection=[SIMILAR, COUNTS],
        run_config={"ops": {"similar_items": {"config": config}}} if config else None,
    )
    assert result.success
    return {
        event.asset_key: {name: value.value for name, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def test_second_batch_updates_the_counts_and_equals_a_full_recount(tmp_path: Path) -> None:
    locations = LakeLocations(env="local", home=str(tmp_path / "home"))
    land_two_batches(locations, tmp_path / "world")
    defs = build_definitions(locations)
    similar_uri = locations.partition_uri("consumption", "similar_items", DAYS[1])
    with DagsterInstance.ephemeral() as instance:
        for day, retrained in zip(DAYS, (True, False), strict=True):
            register_batch(instance, day)
            # what graphsage_step records: the second batch embeds with the kept model
            instance.report_runless_asset_event(
                AssetMaterialization(
                    "product_embeddings",
                    partition=day,
                    metadata={"model_version": MetadataValue.text("gs-1"), "retrained": retrained},
                )
            )
        first = _materialize(defs, locations, instance, DAYS[0])
        assert first[COUNTS]["mode"] == "full" and first[SIMILAR]["blend_mode"].startswith("evaluated")
        second = _materialize(defs, locations, instance, DAYS[1])
        incremental = pq.read_table(similar_uri)
        recount = _materialize(defs, locations, instance, DAYS[1], {"full_recompute": True})
        full = pq.read_table(similar_uri)
    counts = second[COUNTS]
    assert counts["mode"] == "incremental" and counts["counts_base"] == DAYS[0]
    assert counts["late_lines"] == 3 and counts["lines_counted"] > 3
    assert counts["history_read"]["clean_order_products"] == list(DAYS)
    assert second[SIMILAR]["blend_mode"].startswith("carried: GraphSAGE model gs-1 kept")
    assert second[SIMILAR]["blend_chosen_in"] == DAYS[0]
    assert second[SIMILAR]["blend_weight"] == first[SIMILAR]["blend_weight"] > 0
    assert recount[COUNTS]["mode"] == "full" and "full_recompute" in recount[COUNTS]["mode_reason"]
    assert incremental.num_rows > 100 and incremental.equals(full)
    assert recount[COUNTS]["strong_pairs"] == counts["strong_pairs"]
    # every list ranked again: the batch's products moved basket counts every list's scores divide by
    assert 0 < counts["moved_products"] < recount[COUNTS]["moved_products"]
    assert f"moved {counts['moved_products']:,} products' basket counts" in second[SIMILAR]["mode_reason"]
