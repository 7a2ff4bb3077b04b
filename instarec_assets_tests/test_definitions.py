"""The code location as the Dagster UI shows it: zones as groups, descriptions, kinds, a loadable workspace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagster import AssetKey

from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import ZONE_GROUPS

REPO_ROOT = Path(__file__).resolve().parent.parent


EXPECTED_GROUPS = {
    "curated": {
        "user_features",
        "product_features",
        "user_product_features",
        "training_set",
        "inference_set",
        "affected_users",
    },
    "models": {"xgboost_model", "graphsage_model", "user_embeddings", "product_embeddings"},
    "consumption": {
        "reorder_predictions",
        "next_basket",
        "recommendations",
        "ranking_report",
        "similar_items",
        "similar_item_counts",
        "dynamodb_recommendations",
        "analyst_warehouse",
    },
}


def test_every_asset_sits_in_its_zone_group_with_a_description_and_kinds(defs):
    graph = defs.resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        groups.setdefault(node.group_name, set()).add(name)
        assert node.description, name
        assert node.kinds, name
        assert node.partitions_def is not None, name
    assert list(groups) and set(groups) <= set(ZONE_GROUPS)
    assert all(name.startswith("raw_") for name in groups["raw"])
    assert all(name.startswith(("clean_", "quarantined_")) for name in groups["clean"])
    for group, names in EXPECTED_GROUPS.items():
        assert groups[group] == names
    assert graph.get(AssetKey("xgboost_model")).kinds >= {"xgboost"}
    assert graph.get(AssetKey("dynamodb_recommendations")).kinds == {"sqlite"}


def test_aws_definitions_tag_storage_as_s3_and_serving_as_dynamodb():
    locations = LakeLocations(
        env="aws", raw_bucket="r-b", clean_bucket="c-b", curated_bucket="u-b", consumption_bucket="s-b"
    )
    graph = build_definitions(locations).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        expected = {"dynamodb_recommendations": "dynamodb", "analyst_warehouse": "duckdb"}.get(
            key.to_user_string(), "s3"
        )
        assert expected in graph.get(key).kinds, key


def test_clean_assets_depend_on_raw_and_each_other_like_the_seed_data_flow(defs):
    graph = defs.resolve_asset_graph()

    def parents(name: str) -> set[str]:
        return {key.to_user_string() for key in graph.get(AssetKey(name)).parent_keys}

    assert parents("clean_orders") == {"raw_orders"}
    assert parents("clean_products") == {"raw_products", "clean_aisles", "clean_departments"}
    assert parents("clean_order_products") == {
        "raw_order_products_prior",
        "raw_order_products_train",
        "clean_orders",
        "clean_products",
        "quarantined_orders",  # this batch's: lines of a forgotten user's orders are quarantined too
    }


def test_workspace_loads_with_the_dagster_cli(home):
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_dagster_free_modules_import_without_dagster():
    code = (
        "import sys, instarec_assets.lake.clean_orders, instarec_assets.generate; "
        "assert 'dagster' not in sys.modules, 'dagster was imported'"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_code_location_module_exposes_defs(home):
    import instarec_assets

    assert "defs" in dir(instarec_assets)
    assert instarec_assets.defs.resolve_job_def("landing_to_lake") is not None
