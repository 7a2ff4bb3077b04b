"""The analysts' warehouse, Dagster-free: built from small hand-made clean parquet files with known answers.

The clean zone here is two partitions of orders and lines and the catalog as of the second one, in
which product 10 was renamed from "Banana" to "Organic Banana" (its SCD2 history has two rows).
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import duckdb
import pytest

from instarec_assets import cli
from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.lake.clean_order_products import CLEAN_ORDER_PRODUCTS_SCHEMA
from instarec_assets.lake.clean_orders import CLEAN_ORDERS_SCHEMA
from instarec_assets.warehouse import (
    QueryRefusedError,
    WarehouseNotBuiltError,
    WarehouseQueryError,
    WarehouseSaltError,
    build_warehouse_file,
    format_table,
    load_salt,
    published_as_of,
    run_readonly_sql,
    user_key,
    warehouse_path,
)
from instarec_assets.warehouse.readonly import REFUSAL, WarehouseUnreadableError
from instarec_assets.warehouse.salt import SALT_ENV, salt_path

DAY_1 = "2025-01-06"
DAY_2 = "2025-01-13"
SALT = "test-salt-5f1c9e0b7a3d42c8"

AISLES = [(1, "fresh fruits"), (2, "yogurt"), (3, "chips pretzels")]
DEPARTMENTS = [(1, "produce"), (2, "dairy eggs"), (3, "snacks")]
# product_id, product_name, aisle_id, department_id, valid_from, valid_to, is_current
PRODUCTS = [
    (10, "Banana", 1, 1, DAY_1, DAY_2, False),
    (10, "Organic Banana", 1, 1, DAY_2, None, True),
    (20, "Greek Yogurt", 2, 2, DAY_1, None, True),
    (30, "Sea Salt Chips", 3, 3, DAY_1, None, True),
    (40, "Apple", 1, 1, DAY_1, None, True),
]
# order_id, user_id, eval_set, order_number, order_dow, order_hour_of_day, days_since_prior_order
ORDERS = {
    DAY_1: [
        (1001, 7, "prior", 1, 0, 9, None),
        (1002, 7, "prior", 2, 1, 9, 7),
        (1003, 8, "prior", 1, 2, 14, None),
    ],
    DAY_2: [(1004, 7, "train", 3, 3, 14, 7), (1005, 8, "test", 2, 4, 20, 30)],
}
# order_id, product_id, add_to_cart_order, reordered, eval_set
LINES = {
    DAY_1: [
        (1001, 10, 1, 0, "prior"),
        (1001, 20, 2, 0, "prior"),
        (1002, 10, 1, 1, "prior"),
        (1002, 30, 2, 0, "prior"),
        (1002, 20, 3, 1, "prior"),
        (1003, 10, 1, 0, "prior"),
    ],
    DAY_2: [(1004, 10, 1, 1, "train"), (1004, 20, 2, 1, "train")],
}
ORDER_USERS = {order[0]: order[1] for orders in ORDERS.values() for order in orders}


def _write(conn: duckdb.DuckDBPyConnection, path: Path, empty_schema: str, rows: list[tuple]) -> str:
    """A clean-zone parquet file with the exact clean schema (lineage columns included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn.execute(f"CREATE OR REPLACE TEMP TABLE staged AS {empty_schema}")
    columns = [row[0] for row in conn.execute("DESCRIBE staged").fetchall()]
    data_columns = [name for name in columns if not name.startswith("_")]
    placeholders = ", ".join("?" for _ in data_columns)
    for row in rows:
        conn.execute(f"INSERT INTO staged ({', '.join(data_columns)}) VALUES ({placeholders})", list(row))
    conn.execute("UPDATE staged SET _source_file = 'landing/orders.csv', _ingested_at = now()")
    conn.execute(f"COPY staged TO '{path}' (FORMAT parquet)")
    return str(path)


def write_clean_zone(root: Path, days: tuple[str, ...] = (DAY_1, DAY_2)) -> CleanSnapshot:
    """The clean zone as of the last of `days`, in the lake's own year=/month=/day= layout."""

    def where(table: str, day: str) -> Path:
        year, month, dom = day.split("-")
        return root / table / f"year={year}" / f"month={month}" / f"day={dom}" / f"{table}.parquet"

    products_schema = (
        "SELECT NULL::INTEGER AS product_id, NULL::VARCHAR AS product_name, NULL::INTEGER AS aisle_id, "
        "NULL::INTEGER AS department_id, NULL::DATE AS valid_from, NULL::DATE AS valid_to, "
        "NULL::BOOLEAN AS is_current, NULL::VARCHAR AS _source_file, NULL::TIMESTAMPTZ AS _ingested_at "
        "WHERE false"
    )

    def dimension_schema(key: str, name: str) -> str:
        return (
            f"SELECT NULL::INTEGER AS {key}, NULL::VARCHAR AS {name}, NULL::DATE AS updated_on, "
            "NULL::VARCHAR AS _source_file, NULL::TIMESTAMPTZ AS _ingested_at WHERE false"
        )

    last = days[-1]
    products = [row for row in PRODUCTS if row[4] <= last]
    if last == DAY_1:  # before the rename, the first Banana row is still current
        products = [(*row[:5], None, True) for row in products if row[1] != "Organic Banana"]
    with duckdb.connect() as conn:
        return CleanSnapshot(
            orders=[
                _write(conn, where("clean_orders", day), CLEAN_ORDERS_SCHEMA, ORDERS[day]) for day in days
            ],
            order_products=[
                _write(conn, where("clean_order_products", day), CLEAN_ORDER_PRODUCTS_SCHEMA, LINES[day])
                for day in days
            ],
            products=_write(conn, where("clean_products", last), products_schema, products),
            aisles=_write(
                conn,
                where("clean_aisles", last),
                dimension_schema("aisle_id", "aisle"),
                [(key, name, last) for key, name in AISLES],
            ),
            departments=_write(
                conn,
                where("clean_departments", last),
                dimension_schema("department_id", "department"),
                [(key, name, last) for key, name in DEPARTMENTS],
            ),
        )


@pytest.fixture
def snapshot(tmp_path: Path) -> CleanSnapshot:
    return write_clean_zone(tmp_path / "lake" / "clean")


@pytest.fixture
def warehouse(tmp_path: Path, snapshot: CleanSnapshot) -> Path:
    path = warehouse_path(tmp_path / "home")
    summary = build_warehouse_file(path, snapshot, SALT, DAY_2, min_orders_for_reorder_rank=1)
    assert summary.published and summary.path == path
    return path


def query(path: Path, sql: str) -> list[tuple]:
    return run_readonly_sql(path, sql).rows


# -- contents ---------------------------------------------------------------------------------------


def test_joined_order_products_names_every_line_with_its_current_product_aisle_and_department(warehouse):
    rows = query(
        warehouse,
        "SELECT order_id, user_key, eval_set, order_number, order_hour_of_day, add_to_cart_order, reordered, "
        "product_id, product_name, aisle, department FROM joined_order_products ORDER BY order_id, add_to_cart_order",
    )
    u7, u8 = user_key(7, SALT), user_key(8, SALT)
    assert rows == [
        (1001, u7, "prior", 1, 9, 1, 0, 10, "Organic Banana", "fresh fruits", "produce"),
        (1001, u7, "prior", 1, 9, 2, 0, 20, "Greek Yogurt", "yogurt", "dairy eggs"),
        (1002, u7, "prior", 2, 9, 1, 1, 10, "Organic Banana", "fresh fruits", "produce"),
        (1002, u7, "prior", 2, 9, 2, 0, 30, "Sea Salt Chips", "chips pretzels", "snacks"),
        (1002, u7, "prior", 2, 9, 3, 1, 20, "Greek Yogurt", "yogurt", "dairy eggs"),
        (1003, u8, "prior", 1, 14, 1, 0, 10, "Organic Banana", "fresh fruits", "produce"),
        (1004, u7, "train", 3, 14, 1, 1, 10, "Organic Banana", "fresh fruits", "produce"),
        (1004, u7, "train", 3, 14, 2, 1, 20, "Greek Yogurt", "yogurt", "dairy eggs"),
    ]


def test_products_holds_only_current_scd2_rows_and_history_keeps_every_version(warehouse):
    assert query(
        warehouse, "SELECT product_id, product_name, valid_from::VARCHAR FROM products ORDER BY 1"
    ) == [
        (10, "Organic Banana", DAY_2),
        (20, "Greek Yogurt", DAY_1),
        (30, "Sea Salt Chips", DAY_1),
        (40, "Apple", DAY_1),
    ]
    history = query(
        warehouse,
        "SELECT product_name, valid_from::VARCHAR, valid_to::VARCHAR, is_current FROM product_history "
        "WHERE product_id = 10 ORDER BY valid_from",
    )
    assert history == [("Banana", DAY_1, DAY_2, False), ("Organic Banana", DAY_2, None, True)]


def test_orders_and_lines_of_every_partition_up_to_the_warehouse_date(warehouse):
    orders = query(
        warehouse,
        "SELECT order_id, eval_set, order_number, order_dow, order_hour_of_day, days_since_prior_order "
        "FROM orders ORDER BY order_id",
    )
    assert orders == [order[:1] + order[2:] for day in (DAY_1, DAY_2) for order in ORDERS[day]]
    lines = query(warehouse, "SELECT * FROM order_products ORDER BY order_id, add_to_cart_order")
    assert lines == LINES[DAY_1] + LINES[DAY_2]
    assert query(warehouse, "SELECT * FROM aisles ORDER BY 1") == AISLES
    assert query(warehouse, "SELECT * FROM departments ORDER BY 1") == DEPARTMENTS
    info = query(
        warehouse, "SELECT as_of::VARCHAR, order_partitions, min_orders_for_reorder_rank FROM warehouse_info"
    )
    assert info == [(DAY_2, 2, 1)]


def test_marts_match_hand_computed_figures(warehouse):
    assert query(
        warehouse,
        "SELECT rank_by_orders, rank_by_reorder_rate, product_id, product_name, orders, reorders, "
        "round(reorder_rate, 4), users FROM mart_top_products ORDER BY rank_by_orders",
    ) == [
        (1, 2, 10, "Organic Banana", 4, 2, 0.5, 2),
        (2, 1, 20, "Greek Yogurt", 3, 2, 0.6667, 1),
        (3, 3, 30, "Sea Salt Chips", 1, 0, 0.0, 1),
    ]
    assert query(warehouse, "SELECT * FROM mart_reorder_rate_by_department") == [
        (1, "produce", 4, 2, 0.5, 4),
        (2, "dairy eggs", 3, 2, pytest.approx(2 / 3), 3),
        (3, "snacks", 1, 0, 0.0, 1),
    ]
    assert query(warehouse, "SELECT * FROM mart_reorder_rate_by_hour") == [
        (9, 5, 2, 0.4, 2),
        (14, 3, 2, pytest.approx(2 / 3), 2),
    ]
    assert query(
        warehouse,
        "SELECT department, order_hour_of_day, order_lines, reorders, reorder_rate, orders "
        "FROM mart_reorder_rate_by_department_hour",
    ) == [
        ("produce", 9, 2, 1, 0.5, 2),
        ("produce", 14, 2, 1, 0.5, 2),
        ("dairy eggs", 9, 2, 1, 0.5, 2),
        ("dairy eggs", 14, 1, 1, 1.0, 1),
        ("snacks", 9, 1, 0, 0.0, 1),
    ]
    assert query(warehouse, "SELECT * FROM mart_basket_size_distribution") == [
        (1, 1, 0.25),
        (2, 2, 0.5),
        (3, 1, 0.25),
    ]


def test_reorder_rate_rank_waits_for_enough_orders(tmp_path, snapshot):
    path = warehouse_path(tmp_path / "default-threshold")
    build_warehouse_file(path, snapshot, SALT, DAY_2)
    assert query(path, "SELECT rank_by_reorder_rate FROM mart_top_products") == [(None,), (None,), (None,)]


def test_first_partition_alone_and_no_orders_at_all_still_build(tmp_path):
    day_1 = write_clean_zone(tmp_path / "one", days=(DAY_1,))
    path = warehouse_path(tmp_path / "home-one")
    summary = build_warehouse_file(path, day_1, SALT, DAY_1)
    assert summary.rows("orders") == 3 and summary.rows("joined_order_products") == 6
    assert query(path, "SELECT product_name FROM products WHERE product_id = 10") == [("Banana",)]

    empty = CleanSnapshot([], [], day_1.products, day_1.aisles, day_1.departments)
    path = warehouse_path(tmp_path / "home-empty")
    summary = build_warehouse_file(path, empty, SALT, DAY_1)
    assert summary.rows("orders") == summary.rows("mart_basket_size_distribution") == 0
    assert summary.rows("products") == 4 and summary.preview_rows == ()


# -- user ids never reach the warehouse ---------------------------------------------------------------


def test_user_ids_are_replaced_by_a_stable_salted_hash_and_the_salt_is_not_in_the_file(
    warehouse, snapshot, tmp_path
):
    columns = query(
        warehouse,
        "SELECT table_name, column_name FROM information_schema.columns WHERE column_name ILIKE '%user%'",
    )
    assert {column for _, column in columns} == {"user_key", "users"}
    assert {table for table, column in columns if column == "user_key"} == {"orders", "joined_order_products"}

    keys = dict(query(warehouse, "SELECT order_id, user_key FROM orders"))
    assert keys == {order_id: user_key(user, SALT) for order_id, user in ORDER_USERS.items()}
    assert (
        keys[1001] == keys[1002] == keys[1004] != keys[1003] == keys[1005]
    )  # same user, same key, across partitions
    assert keys[1001] == hashlib.sha256(f"{SALT}:7".encode()).hexdigest()[:16]
    assert all(len(key) == 16 and set(key) <= set("0123456789abcdef") for key in keys.values())

    data = warehouse.read_bytes()
    assert SALT.encode() not in data
    assert not Path(f"{warehouse}.wal").exists()

    other = warehouse_path(tmp_path / "other-salt")
    build_warehouse_file(other, snapshot, "another-salt-0123456789", DAY_2)
    assert set(dict(query(other, "SELECT order_id, user_key FROM orders")).values()).isdisjoint(keys.values())


def test_warehouse_is_isolated_from_the_lake(warehouse, snapshot):
    """No stored view reads a parquet file: the warehouse is a copy, readable with file access off."""
    views = query(warehouse, "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal")
    assert [name for name, _ in views] == ["joined_order_products"]
    assert "read_parquet" not in views[0][1] and snapshot.products not in views[0][1]
    assert snapshot.orders[0].encode() not in warehouse.read_bytes()


def test_salt_file_is_created_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    home = tmp_path / "home"
    first = load_salt(home)
    path = salt_path(home)
    assert first.source == f"file {path}" and len(first.value) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_salt(home).value == first.value
    assert first.value not in repr(first)
    assert [entry.name for entry in path.parent.iterdir()] == ["warehouse_salt"]


def test_salt_from_the_environment_wins_and_must_be_long_enough(tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, "  an-environment-salt-1234  ")
    salt = load_salt(tmp_path)
    assert salt.value == "an-environment-salt-1234" and salt.source == f"environment variable {SALT_ENV}"
    assert not salt_path(tmp_path).exists()
    monkeypatch.setenv(SALT_ENV, "short")
    with pytest.raises(WarehouseSaltError, match=f"{SALT_ENV}: the warehouse salt must be at least 16"):
        load_salt(tmp_path)


# -- publishing --------------------------------------------------------------------------------------


def test_rebuild_replaces_the_file_but_an_older_partition_never_replaces_a_newer_one(tmp_path, snapshot):
    day_1 = write_clean_zone(tmp_path / "lake-day-1", days=(DAY_1,))
    path = warehouse_path(tmp_path / "home")
    assert build_warehouse_file(path, day_1, SALT, DAY_1).published
    assert published_as_of(path) == DAY_1
    assert build_warehouse_file(path, snapshot, SALT, DAY_2).published
    assert published_as_of(path) == DAY_2

    kept = build_warehouse_file(path, day_1, SALT, DAY_1)
    assert not kept.published and kept.kept_as_of == DAY_2 and kept.relations == ()
    assert query(path, "SELECT count(*) FROM orders") == [(5,)]

    again = build_warehouse_file(path, snapshot, SALT, DAY_2)
    assert again.published and again.rows("orders") == 5
    path.write_bytes(b"not a duckdb file")  # an unreadable warehouse is replaced, not kept
    assert build_warehouse_file(path, day_1, SALT, DAY_1).published
    assert published_as_of(path) == DAY_1
    leftovers = [entry.name for entry in path.parent.iterdir() if entry.name != path.name]
    assert all(name.endswith(".lock") for name in leftovers), leftovers


def test_a_failed_build_leaves_the_published_warehouse_and_no_staging_file(tmp_path, snapshot):
    path = warehouse_path(tmp_path / "home")
    build_warehouse_file(path, snapshot, SALT, DAY_2)
    before = path.read_bytes()
    broken = CleanSnapshot(
        snapshot.orders, snapshot.order_products, str(tmp_path / "missing.parquet"), "", ""
    )
    with pytest.raises(duckdb.Error):
        build_warehouse_file(path, broken, SALT, "2025-01-20")
    assert path.read_bytes() == before
    assert not [entry for entry in path.parent.iterdir() if entry.name.endswith((".building", ".wal"))]


# -- read-only queries -------------------------------------------------------------------------------


def test_select_show_describe_and_summarize_are_allowed(warehouse):
    assert ("mart_top_products",) in query(warehouse, "SHOW TABLES")
    assert query(warehouse, "DESCRIBE aisles")[0][:2] == ("aisle_id", "INTEGER")
    assert query(warehouse, "WITH t AS (SELECT 1 AS x) FROM t;") == [(1,)]
    assert len(query(warehouse, "SUMMARIZE orders")) == 7


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("INSERT INTO aisles VALUES (9, 'x')", "INSERT"),
        ("UPDATE aisles SET aisle = 'x'", "UPDATE"),
        ("DELETE FROM aisles", "DELETE"),
        ("CREATE TABLE x AS SELECT 1", "CREATE"),
        ("CREATE TEMP TABLE x AS SELECT 1", "CREATE"),
        ("DROP TABLE aisles", "DROP"),
        ("COPY (SELECT 1) TO '{tmp}/x.csv'", "COPY"),
        ("EXPORT DATABASE '{tmp}/export'", "EXPORT"),
        ("ATTACH '{tmp}/other.duckdb' AS other", "ATTACH"),
        ("INSTALL httpfs", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("SET enable_external_access = true", "SET"),
        ("PRAGMA show_tables", "PRAGMA"),
        ("CALL pragma_version()", "CALL"),
        ("EXPLAIN ANALYZE SELECT 1", "EXPLAIN"),
        ("SELECT 1; DROP TABLE aisles", "2 statements: SELECT, DROP"),
        ("   ;  ", "no statement"),
    ],
)
def test_anything_but_one_select_is_refused_before_it_runs(warehouse, tmp_path, sql, kind):
    before = warehouse.read_bytes()
    with pytest.raises(QueryRefusedError) as error:
        run_readonly_sql(warehouse, sql.format(tmp=tmp_path))
    assert str(error.value) == f"{REFUSAL} (got {kind})"
    assert warehouse.read_bytes() == before
    assert not any((tmp_path / name).exists() for name in ("x.csv", "export", "other.duckdb"))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM '{lake}'",
        "SELECT * FROM read_parquet('{lake}')",
    ],
)
def test_files_outside_the_warehouse_cannot_be_read(warehouse, snapshot, sql):
    with pytest.raises(
        QueryRefusedError, match=r"^only the warehouse's own tables can be read \(Permission Error"
    ):
        run_readonly_sql(warehouse, sql.format(lake=snapshot.orders[0]))


def test_environment_variables_cannot_be_read(warehouse, monkeypatch):
    monkeypatch.setenv(SALT_ENV, SALT)
    with pytest.raises(WarehouseQueryError, match="getenv does not exist"):
        run_readonly_sql(warehouse, f"SELECT getenv('{SALT_ENV}')")


def test_errors_are_one_line_and_a_missing_warehouse_says_to_materialize(warehouse, tmp_path):
    with pytest.raises(WarehouseQueryError) as error:
        run_readonly_sql(warehouse, "SELEC * FROM orders")
    assert str(error.value) == 'Parser Error: syntax error at or near "SELEC"'
    with pytest.raises(
        WarehouseQueryError, match=r"^Catalog Error: Table with name nope does not exist!"
    ) as error:
        run_readonly_sql(warehouse, "SELECT * FROM nope")
    assert "\n" not in str(error.value)
    with pytest.raises(
        WarehouseNotBuiltError, match=r"no analyst warehouse at .*: materialize a partition first"
    ):
        run_readonly_sql(tmp_path / "nowhere.duckdb", "SELECT 1")


def test_max_rows_truncates_and_says_so(warehouse):
    result = run_readonly_sql(warehouse, "SELECT order_id FROM orders ORDER BY 1", max_rows=2)
    assert result.rows == [(1001,), (1002,)] and result.truncated
    assert format_table(result).splitlines()[-1].startswith("(first 2 rows shown;")
    assert not run_readonly_sql(warehouse, "SELECT order_id FROM orders", max_rows=5).truncated


# -- `instarec sql` ------------------------------------------------------------------------------------


def run_sql(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    status = cli.main(["sql", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return status, captured.out.splitlines(), captured.err.splitlines()


def test_instarec_sql_prints_an_aligned_table(capsys, home, snapshot):
    build_warehouse_file(warehouse_path(home), snapshot, SALT, DAY_2)
    status, out, err = run_sql(
        capsys,
        "SELECT department, order_lines, reorder_rate, NULL AS note FROM mart_reorder_rate_by_department ORDER BY 1",
        "--home",
        str(home),
    )
    assert (status, err) == (0, [])
    assert out == [
        "department      order_lines    reorder_rate  note",
        "------------  -------------  --------------  ------",
        "dairy eggs                3        0.666667  NULL",
        "produce                   4             0.5  NULL",
        "snacks                    1               0  NULL",
        "(3 rows)",
    ]


def test_instarec_sql_refuses_writes_in_one_line(capsys, home, snapshot):
    build_warehouse_file(warehouse_path(home), snapshot, SALT, DAY_2)
    status, out, err = run_sql(capsys, "DELETE FROM orders", "--home", str(home))
    assert (status, out, err) == (1, [], [f"instarec: error: {REFUSAL} (got DELETE)"])
    status, out, err = run_sql(capsys, "SELECT * FROM orderz", "--home", str(home))
    assert (
        status == 1
        and len(err) == 1
        and err[0].startswith("instarec: error: Catalog Error: Table with name orderz")
    )


def test_instarec_sql_without_a_warehouse_says_to_materialize_first(capsys, home):
    status, out, err = run_sql(capsys, "SELECT 1", "--home", str(home))
    assert status == 1 and out == [] and len(err) == 1
    assert err[0].startswith("instarec: error: no analyst warehouse at ") and "materialize" in err[0]


def test_instarec_sql_on_a_corrupt_warehouse_names_the_file_and_a_rebuild_replaces_it(capsys, home, snapshot):
    path = warehouse_path(home)
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(range(256)) * 64)
    status, out, err = run_sql(capsys, "SELECT 1", "--home", str(home))
    assert (status, out, len(err)) == (1, [], 1)
    assert err[0].startswith(f"instarec: error: {path}: cannot open the analyst warehouse (IO Error: ")
    assert err[0].endswith("if the file is damaged, materialize a partition to rebuild it")
    with pytest.raises(WarehouseUnreadableError, match="not a valid DuckDB database file"):
        run_readonly_sql(path, "SELECT 1")
    assert published_as_of(path) is None
    assert build_warehouse_file(path, snapshot, SALT, DAY_2).published
    status, out, err = run_sql(capsys, "SELECT count(*) AS n FROM departments", "--home", str(home))
    assert (status, err) == (0, []) and out[-1] == "(1 row)"


# -- quarantine ---------------------------------------------------------------------------------------


def write_quarantine(root: Path, table: str, day: str, rows: list[tuple]) -> str:
    """A quarantine parquet file (source_file, source_row, reason, record, ingested_at) in the lake layout."""
    year, month, dom = day.split("-")
    path = root / f"quarantined_{table}" / f"year={year}" / f"month={month}" / f"day={dom}" / "q.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as conn:
        conn.execute(
            "CREATE TABLE q (source_file VARCHAR, source_row BIGINT, reason VARCHAR, record VARCHAR, "
            "ingested_at TIMESTAMPTZ)"
        )
        for row in rows:
            conn.execute("INSERT INTO q VALUES (?, ?, ?, ?, now())", list(row))
        conn.execute(f"COPY q TO '{path}' (FORMAT parquet)")
    return str(path)


def test_quarantined_rows_of_every_batch_are_readable_with_user_ids_masked(tmp_path, snapshot):
    lake = tmp_path / "quarantine-lake"
    landing = "/home/someone/instarec/landing"
    quarantine = {
        "orders": [
            write_quarantine(
                lake,
                "orders",
                DAY_1,
                [
                    (
                        f"{landing}/{DAY_1}/orders.csv",
                        4,
                        "order_dow: out of range 0..6: '9'",
                        '{"order_id":"1009","user_id":"7","order_dow":"9"}',
                    ),
                    (
                        f"{landing}/{DAY_1}/orders.csv",
                        5,
                        "user_id: not an integer: 'x31337'",
                        '{"order_id":"1010","user_id":"x31337"}',
                    ),
                ],
            ),
            write_quarantine(
                lake,
                "orders",
                DAY_2,
                [(f"{landing}/{DAY_2}/orders.csv", 9, "too many fields", "1011,31337,prior,1,2,3,,9")],
            ),
        ],
        "products": [
            write_quarantine(
                lake,
                "products",
                DAY_2,
                [
                    (
                        f"{landing}/{DAY_2}/products.csv",
                        2,
                        "aisle_id: not an integer: 'a'",
                        '{"product_id":"50","product_name":"Kale","aisle_id":"a","department_id":"1"}',
                    )
                ],
            )
        ],
        "aisles": [],
    }
    path = warehouse_path(tmp_path / "home-quarantine")
    summary = build_warehouse_file(path, snapshot, SALT, DAY_2, quarantine=quarantine)
    assert summary.rows("quarantine") == 4
    rows = query(path, "SELECT source_table, batch, source_file, source_row, reason, record FROM quarantine")
    [(key_7,)] = query(path, "SELECT user_key FROM orders WHERE order_id = 1001")
    assert rows[0][:5] == ("orders", DAY_1, "orders.csv", 4, "order_dow: out of range 0..6: '9'")
    assert json.loads(rows[0][5]) == {"order_id": "1009", "user_id": key_7, "order_dow": "9"}
    # A bad user id is masked in the reason; hashed in the record like a good one.
    assert rows[1][4] == "user_id: not an integer: '<masked>'"
    assert "x31337" not in rows[1][5] and json.loads(rows[1][5])["user_id"] != "x31337"
    assert rows[2][:5] == ("orders", DAY_2, "orders.csv", 9, "too many fields")
    assert rows[2][5] == "1011,<masked>,prior,1,2,3,,9"
    assert rows[3][0] == "products" and json.loads(rows[3][5])["product_name"] == "Kale"
    # No landing path (a home folder) and no raw user id reach the file.
    content = path.read_bytes()
    assert b"/home/someone" not in content and b"31337" not in content

    no_quarantine = warehouse_path(tmp_path / "home-none")
    assert build_warehouse_file(no_quarantine, snapshot, SALT, DAY_2).rows("quarantine") == 0
