"""Dagster conventions applied centrally in definitions.py: every asset has its group's owner and
`zone`/`layer` tags, in both environments, so an asset added to a group gets them without edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from instarec_assets.definitions import GROUP_LAYERS, GROUP_OWNERS, build_definitions
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.pipeline.runner import ZONE_GROUPS

AWS_BUCKETS = {f"{zone}_bucket": f"instarec-{zone}" for zone in ("raw", "clean", "curated", "consumption")}


@pytest.mark.parametrize("env", ["local", "aws"])
def test_every_asset_has_its_groups_owner_and_tags(env: str, tmp_path: Path):
    buckets = AWS_BUCKETS if env == "aws" else {}
    locations = LakeLocations(env=env, home=str(tmp_path), **buckets)
    graph = build_definitions(locations).resolve_asset_graph()
    nodes = [graph.get(key) for key in graph.get_all_asset_keys()]
    assert len(nodes) >= 30
    assert {node.group_name for node in nodes} <= set(GROUP_OWNERS) == set(ZONE_GROUPS) == set(GROUP_LAYERS)
    for node in nodes:
        name = node.key.to_user_string()
        assert node.owners == [GROUP_OWNERS[node.group_name]], name
        assert node.tags["zone"] == node.group_name, name
        assert node.tags["layer"] == GROUP_LAYERS[node.group_name], name
    owners = {node.key.to_user_string(): node.owners for node in nodes}
    assert owners["clean_orders"] == ["team:data-platform"]
    assert owners["xgboost_model"] == ["team:ml"]
