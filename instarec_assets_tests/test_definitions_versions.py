"""code_version on every asset (a hash of its group's logic packages) and the freshness policy on what is
served, as the code location declares them."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import yaml

from instarec_assets.definitions import GROUP_LOGIC, build_definitions, logic_version, source_digest
from instarec_assets.lake.locations import LakeLocations

REPO = Path(__file__).resolve().parents[1]


def test_every_asset_carries_its_groups_logic_version(tmp_path: Path) -> None:
    graph = build_definitions(LakeLocations(home=str(tmp_path))).resolve_asset_graph()
    nodes = [graph.get(key) for key in graph.get_all_asset_keys()]
    assert {node.group_name for node in nodes} == set(GROUP_LOGIC)
    for node in nodes:
        assert node.code_version == logic_version(node.group_name), node.key
        assert re.fullmatch(r"[0-9a-f]{12}", node.code_version), node.key
    versions = {node.key.to_user_string(): node.code_version for node in nodes}
    assert versions["clean_orders"] == versions["raw_orders"]  # both are the lake package's logic
    assert versions["clean_orders"] != versions["training_set"] != versions["xgboost_model"]


def test_logic_version_follows_source_and_sql_only(tmp_path: Path) -> None:
    package = tmp_path / "lake"
    package.mkdir()
    (package / "clean.py").write_text("SQL = 'SELECT 1'\n")
    (package / "dedup.sql").write_text("SELECT DISTINCT * FROM t\n")
    first = source_digest(tmp_path, ("lake",))
    assert source_digest(tmp_path, ("lake",)) == first
    (package / "notes.md").write_text("docs do not change the logic\n")
    (package / "clean.cpython-311.pyc").write_bytes(b"\x00")
    assert source_digest(tmp_path, ("lake",)) == first
    (package / "dedup.sql").write_text("SELECT DISTINCT ON (id) * FROM t\n")
    assert source_digest(tmp_path, ("lake",)) != first


def test_what_is_served_has_a_freshness_policy(tmp_path: Path) -> None:
    graph = build_definitions(LakeLocations(home=str(tmp_path))).resolve_asset_graph()
    served = {"recommendations", "dynamodb_recommendations"}
    for node in (graph.get(key) for key in graph.get_all_asset_keys()):
        policy = node.freshness_policy
        if node.key.to_user_string() in served:
            assert policy.warn_window.to_timedelta() == timedelta(days=8)
            assert policy.fail_window.to_timedelta() == timedelta(days=15)
        else:
            assert policy is None, node.key
    # The aws instance evaluates freshness policies (off by default while Dagster calls them preview).
    instance = yaml.safe_load((REPO / "infra" / "dagster.yaml").read_text())
    assert instance["freshness"] == {"enabled": True}
