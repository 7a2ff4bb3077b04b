"""The code location as the Dagster UI shows it: zones as groups, descriptions, kinds, a loadable workspace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_every_asset_sits_in_its_zone_group_with_a_description_and_kinds(defs):
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        expected_group = name.split("_", 1)[0] if not name.startswith("quarantined_") else "clean"
        assert node.group_name == expected_group, name
        assert node.description, name
        assert "duckdb" in node.kinds, name
        assert node.partitions_def is not None, name


def test_aws_definitions_tag_storage_as_s3():
    locations = LakeLocations(
        env="aws", raw_bucket="r-b", clean_bucket="c-b", curated_bucket="u-b", consumption_bucket="s-b"
    )
    graph = build_definitions(locations).resolve_asset_graph()
    assert all("s3" in graph.get(key).kinds for key in graph.get_all_asset_keys())


def test_clean_assets_depend_on_raw_and_each_other_like_the_seed_data_flow(defs):
    graph = defs.resolve_asset_graph()

    def parents(name: str) -> set[str]:
        from dagster import AssetKey

        return {key.to_user_string() for key in graph.get(AssetKey(name)).parent_keys}

    assert parents("clean_orders") == {"raw_orders"}
    assert parents("clean_products") == {"raw_products", "clean_aisles", "clean_departments"}
    assert parents("clean_order_products") == {
        "raw_order_products_prior",
        "raw_order_products_train",
        "clean_orders",
        "clean_products",
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
