"""next_basket's choice to carry its previous partition: only when that partition was selected from
the same predictions chain, with the same P(None), and nothing it read was materialised after it."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetMaterialization, DagsterInstance

from instarec_assets.assets.deltas import basket_carry
from instarec_assets.pipeline.runner import register_batch

FIRST, SECOND = "2025-01-06", "2025-01-13"
CHAIN = [(FIRST, "predictions-1.parquet"), (SECOND, "predictions-2.parquet")]


def _materialize(instance: DagsterInstance, asset: str, partition: str, **metadata) -> None:
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=asset, partition=partition, metadata=metadata)
    )


@pytest.fixture
def instance(tmp_path: Path):
    with DagsterInstance.ephemeral() as instance:
        for batch in (FIRST, SECOND):
            register_batch(instance, batch)
            _materialize(instance, "clean_orders", batch)
        _materialize(instance, "reorder_predictions", FIRST)
        _materialize(
            instance,
            "next_basket",
            FIRST,
            predictions_chain=[FIRST],
            none_probability_fingerprint="independence",
        )
        _materialize(instance, "reorder_predictions", SECOND)
        yield instance


def _carry(instance, tmp_path: Path, chain=CHAIN, fingerprint="independence", stored=True):
    baskets = tmp_path / ("next_basket-1.parquet" if stored else "missing.parquet")
    if stored:
        baskets.touch()
    return basket_carry(
        instance, chain, fingerprint, lambda key: str(baskets), lambda uri: Path(uri).exists()
    )


def test_the_previous_baskets_are_carried_when_nothing_they_read_changed(instance, tmp_path):
    carry = _carry(instance, tmp_path)
    assert carry.previous == FIRST and carry.uri == str(tmp_path / "next_basket-1.parquet")
    assert carry.reason.startswith(f"carried from {FIRST}")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda i: _materialize(i, "reorder_predictions", FIRST), f"reorder_predictions of {FIRST}"),
        (lambda i: _materialize(i, "clean_orders", FIRST), f"clean_orders of {FIRST}"),
    ],
)
def test_an_input_materialised_after_the_previous_baskets_forces_a_full_selection(
    instance, tmp_path, change, reason
):
    change(instance)
    carry = _carry(instance, tmp_path)
    assert carry.previous is None and carry.reason.startswith(reason), carry.reason


def test_this_batchs_own_clean_orders_do_not_stop_the_carry(instance, tmp_path):
    _materialize(instance, "clean_orders", SECOND)
    assert _carry(instance, tmp_path).previous == FIRST


def test_another_chain_calibration_or_a_missing_file_forces_a_full_selection(instance, tmp_path):
    assert "full partition" in _carry(instance, tmp_path, chain=CHAIN[1:]).reason
    assert "P(None)" in _carry(instance, tmp_path, fingerprint="sha256:0").reason
    assert "not stored" in _carry(instance, tmp_path, stored=False).reason
    other = [("2025-01-01", "p0.parquet"), *CHAIN]
    assert "another predictions chain" in _carry(instance, tmp_path, chain=other).reason
    for carry in (_carry(instance, tmp_path, chain=CHAIN[1:]), _carry(instance, tmp_path, chain=other)):
        assert carry.previous is None and carry.uri is None
