"""The warehouse updated with one batch equals the warehouse rebuilt from every batch, table for table;
and an update falls back to a full build when the published warehouse cannot be extended."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from instarec_assets.warehouse import (
    RELATIONS,
    BatchRows,
    build_warehouse_file,
    published_as_of,
    warehouse_path,
)
from instarec_assets.warehouse.readonly import open_readonly
from instarec_assets_tests.test_warehouse import DAY_1, DAY_2, SALT, write_clean_zone, write_quarantine

# Each build's own: when and how it was built.
BUILD_COLUMNS = ("built_at", "build_mode")


def warehouse_contents(path: Path) -> dict[str, tuple]:
    """Every relation of a warehouse file: its kind, comment, columns and types, and its rows sorted."""
    contents = {}
    with open_readonly(path) as conn:
        objects = conn.execute(
            "SELECT table_name, 'table', comment FROM duckdb_tables() WHERE database_name = current_database() "
            "UNION ALL SELECT view_name, 'view', comment FROM duckdb_views() "
            "WHERE database_name = current_database() AND NOT internal"
        ).fetchall()
        for name, kind, comment in objects:
            columns = [(column, kind_) for column, kind_, *_ in conn.execute(f"DESCRIBE {name}").fetchall()]
            selected = ", ".join(column for column, _ in columns if column not in BUILD_COLUMNS)
            rows = sorted(conn.execute(f"SELECT {selected} FROM {name}").fetchall(), key=repr)
            contents[name] = (kind, comment, tuple(columns), tuple(rows))
    return contents


def quarantined(lake: Path, day: str) -> dict[str, list[str]]:
    """One quarantined order (a bad user id, masked in the warehouse) and one product of the batch."""
    return {
        "orders": [
            write_quarantine(
                lake,
                "orders",
                day,
                [(f"landing/{day}/orders.csv", 3, "user_id: not an integer: 'u1'", '{"user_id":"u1"}')],
            )
        ],
        "products": [
            write_quarantine(
                lake, "products", day, [(f"landing/{day}/products.csv", 2, "too many fields", "5,a,b,c,d")]
            )
        ],
    }


def test_an_update_with_the_batch_equals_a_full_rebuild_table_for_table(tmp_path: Path):
    clean = tmp_path / "lake" / "clean"
    first, quarantine_1 = write_clean_zone(clean, (DAY_1,)), quarantined(tmp_path / "lake", DAY_1)
    second, quarantine_2 = write_clean_zone(clean, (DAY_1, DAY_2)), quarantined(tmp_path / "lake", DAY_2)
    quarantine = {table: [*quarantine_1[table], *quarantine_2[table]] for table in quarantine_1}
    batch = BatchRows(DAY_1, [second.orders[-1]], [second.order_products[-1]], quarantine_2)

    updated = warehouse_path(tmp_path / "updated")
    summary = build_warehouse_file(updated, first, SALT, DAY_1, quarantine=quarantine_1)
    assert (summary.mode, summary.full_reason) == ("full", "first batch")
    summary = build_warehouse_file(updated, second, SALT, DAY_2, quarantine=quarantine, batch=batch)
    assert (summary.mode, summary.full_reason) == ("incremental", "")
    assert summary.rows("orders") == 5 and summary.rows("quarantine") == 4

    rebuilt = warehouse_path(tmp_path / "rebuilt")
    assert build_warehouse_file(rebuilt, second, SALT, DAY_2, quarantine=quarantine).mode == "full"

    incremental, full = warehouse_contents(updated), warehouse_contents(rebuilt)
    assert set(incremental) == {relation.name for relation in RELATIONS} | {"warehouse_info"}
    for name in full:
        assert incremental[name] == full[name], name
    # Same masked keys, the rename seen everywhere, and the marts count both batches.
    assert incremental["products"][3][0][:2] == (10, "Organic Banana")
    with open_readonly(updated) as conn:
        assert conn.execute("SELECT build_mode FROM warehouse_info").fetchall() == [("incremental",)]
        assert conn.execute("SELECT orders FROM mart_top_products WHERE product_id = 10").fetchall() == [(4,)]


def test_an_update_falls_back_to_a_full_build_and_says_why(tmp_path: Path):
    clean = tmp_path / "lake" / "clean"
    first = write_clean_zone(clean, (DAY_1,))
    second = write_clean_zone(clean, (DAY_1, DAY_2))
    batch = BatchRows(DAY_1, [second.orders[-1]], [second.order_products[-1]], {})
    path = warehouse_path(tmp_path / "home")

    def reason(salt: str = SALT, **kwargs) -> str:
        return build_warehouse_file(path, second, salt, DAY_2, batch=batch, **kwargs).full_reason

    assert reason() == "no published warehouse"
    assert reason() == f"the published warehouse is as of {DAY_2}, not the previous batch {DAY_1}"
    path.unlink()
    build_warehouse_file(path, first, SALT, DAY_1)
    assert reason(full_reason="asked (full_rebuild)") == "asked (full_rebuild)"
    path.unlink()
    build_warehouse_file(path, first, SALT, DAY_1)
    assert reason(salt="another-salt-0123456789") == "the published warehouse was built with another salt"
    path.unlink()
    build_warehouse_file(path, first, SALT, DAY_1)
    assert reason(min_orders_for_reorder_rank=1) == (
        "the published warehouse ranks reorder rates with another minimum of orders"
    )
    path.unlink()
    build_warehouse_file(path, first, SALT, DAY_1)
    with duckdb.connect(str(path)) as conn:  # as a build of the relations' SQL before this change left it
        conn.execute("ALTER TABLE warehouse_info DROP COLUMN layout")
    assert reason() == "the published warehouse predates incremental updates"
    path.unlink()
    build_warehouse_file(path, first, SALT, DAY_1)
    with duckdb.connect(str(path)) as conn:
        conn.execute("UPDATE warehouse_info SET layout = 'older'")
    assert reason() == "the published warehouse was built by other relation SQL"
    assert published_as_of(path) == DAY_2


def test_an_update_never_goes_backwards(tmp_path: Path):
    clean = tmp_path / "lake" / "clean"
    second = write_clean_zone(clean, (DAY_1, DAY_2))
    path = warehouse_path(tmp_path / "home")
    build_warehouse_file(path, second, SALT, DAY_2)
    batch = BatchRows("2024-12-30", [second.orders[0]], [second.order_products[0]], {})
    summary = build_warehouse_file(path, second, SALT, DAY_1, batch=batch)
    assert not summary.published and summary.kept_as_of == DAY_2


@pytest.mark.parametrize("missing", ["orders", "order_products"])
def test_a_batch_without_orders_or_lines_appends_nothing_of_them(tmp_path: Path, missing: str):
    clean = tmp_path / "lake" / "clean"
    first = write_clean_zone(clean, (DAY_1,))
    second = write_clean_zone(clean, (DAY_1, DAY_2))
    files = {"orders": [second.orders[-1]], "order_products": [second.order_products[-1]], missing: []}
    path = warehouse_path(tmp_path / "home")
    build_warehouse_file(path, first, SALT, DAY_1)
    summary = build_warehouse_file(path, second, SALT, DAY_2, batch=BatchRows(DAY_1, quarantine={}, **files))
    assert summary.mode == "incremental"
    assert summary.rows("orders") == (3 if missing == "orders" else 5)
    assert summary.rows("order_products") == (6 if missing == "order_products" else 8)
