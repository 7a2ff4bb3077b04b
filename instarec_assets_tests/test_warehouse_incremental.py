"""The warehouse updated with one batch equals the warehouse rebuilt from every batch, table for table;
and an update falls back to a full build when the published warehouse cannot be extended."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.warehouse import (
    RELATIONS,
    BatchRows,
    build_warehouse_file,
    published_as_of,
    warehouse_path,
)
from instarec_assets.warehouse.build import RelationSummary
from instarec_assets.warehouse.readonly import open_readonly
from instarec_assets_tests.test_warehouse import (
    DAY_1,
    DAY_2,
    PRODUCTS,
    SALT,
    _write,
    write_clean_zone,
    write_quarantine,
)

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


DAY_3 = "2025-01-20"
# The third batch: prior lines for the test order 1005 landed in DAY_2 (user 8 buys 30 for the first
# time and 10 again), one more line for 1002 (an order whose other lines are in DAY_1), and a new
# user's new order 1006.
DAY_3_ORDERS = [(1006, 9, "prior", 1, 5, 9, None)]
DAY_3_LINES = [
    (1005, 30, 1, 0, "prior"),
    (1005, 10, 2, 1, "prior"),
    (1002, 40, 4, 0, "prior"),
    (1006, 40, 1, 0, "prior"),
    (1006, 20, 2, 0, "prior"),
]


def third_batch(clean: Path, yogurt_department: int) -> tuple[CleanSnapshot, BatchRows]:
    """The clean zone as of DAY_3 (Greek Yogurt, bought in orders the batch does not touch, in
    `yogurt_department` from then on) and its batch."""
    second = write_clean_zone(clean, (DAY_1, DAY_2))

    def where(table: str) -> Path:
        return clean / table / "year=2025" / "month=01" / "day=20" / f"{table}.parquet"

    products = [row for row in PRODUCTS if row[-1]]
    if yogurt_department != 2:
        products = [row for row in products if row[0] != 20] + [
            (20, "Greek Yogurt", 2, 2, DAY_1, DAY_3, False),
            (20, "Greek Yogurt", 2, yogurt_department, DAY_3, None, True),
        ]
    with duckdb.connect() as conn:
        orders = _write(conn, where("clean_orders"), CLEAN_ORDERS_SCHEMA, DAY_3_ORDERS)
        lines = _write(conn, where("clean_order_products"), CLEAN_ORDER_PRODUCTS_SCHEMA, DAY_3_LINES)
        catalog = _write(
            conn,
            where("clean_products"),
            f"FROM read_parquet('{second.products}', hive_partitioning = false) WHERE false",
            products,
        )
    third = replace(
        second,
        orders=[*second.orders, orders],
        order_products=[*second.order_products, lines],
        products=catalog,
    )
    return third, BatchRows(DAY_2, [orders], [lines], {})


@pytest.mark.parametrize("yogurt_department", [2, 3], ids=["catalog kept", "a product moved department"])
def test_marts_updated_from_the_touched_orders_equal_a_rebuild(tmp_path: Path, yogurt_department: int):
    clean = tmp_path / "lake" / "clean"
    second = write_clean_zone(clean, (DAY_1, DAY_2))
    third, batch = third_batch(clean, yogurt_department)
    updated = warehouse_path(tmp_path / "updated")
    build_warehouse_file(updated, second, SALT, DAY_2, min_orders_for_reorder_rank=1)
    summary = build_warehouse_file(updated, third, SALT, DAY_3, batch=batch, min_orders_for_reorder_rank=1)
    assert summary.mode == "incremental"
    built = {relation.name: relation.built for relation in summary.relations}
    assert built["orders"] == built["order_products"] == "appended" and built["products"] == "rebuilt"
    assert built["mart_top_products"] == built["mart_reorder_rate_by_hour"] == "updated"
    assert built["mart_basket_size_distribution"] == "updated"
    moved = yogurt_department != 2
    assert built["mart_reorder_rate_by_department_hour"] == ("rebuilt" if moved else "updated")

    rebuilt = warehouse_path(tmp_path / "rebuilt")
    full = build_warehouse_file(rebuilt, third, SALT, DAY_3, min_orders_for_reorder_rank=1)
    assert summary.relations == tuple(
        RelationSummary(r.name, r.kind, r.rows, built[r.name]) for r in full.relations
    )
    incremental, expected = warehouse_contents(updated), warehouse_contents(rebuilt)
    for name in expected:
        assert incremental[name] == expected[name], name
    with open_readonly(updated) as conn:
        # 10: users 7 and 8 (8's second order adds no buyer); 30: 7, then 8's first; 40: 7 (a late
        # line of 1002) and 9
        assert conn.execute(
            "SELECT product_id, orders, users FROM mart_top_products ORDER BY product_id"
        ).fetchall() == [(10, 5, 2), (20, 4, 2), (30, 2, 2), (40, 2, 2)]
        assert conn.execute("SELECT count(*) FROM joined_order_products").fetchall() == [
            (summary.rows("joined_order_products"),)
        ]
        # order 1002 gained a line: its basket is 4 now, and no order has 3
        assert conn.execute("SELECT basket_size, orders FROM mart_basket_size_distribution").fetchall() == [
            (1, 1),
            (2, 4),
            (4, 1),
        ]


def test_relations_updated_in_place_come_after_what_the_touched_lines_read():
    """An update computes the touched lines (TOUCHED_AFTER_SQL) just before the first relation with
    `update_sql`, from the appended orders and the rebuilt products: RELATIONS must list those
    first, or the marts would be updated from last batch's rows."""
    from instarec_assets.warehouse.build import TOUCHED_AFTER_SQL

    names = [relation.name for relation in RELATIONS]
    first_update = min(names.index(relation.name) for relation in RELATIONS if relation.update_sql)
    read = {name for name in names if f" {name} " in f" {' '.join(TOUCHED_AFTER_SQL.split())} "}
    assert read == {"orders", "products"}
    appended = {relation.name for relation in RELATIONS if relation.appends}
    assert all(names.index(name) < first_update for name in read | appended), names
