"""Forgetting a shopper end to end: a generated lake materialised in full, `instarec forget`, then
every parquet file (all zones, model folders included), the landing CSVs, the warehouse and the
SQLite serving store scanned for the user; a later landing of the user quarantined as `forgotten`,
and landed again after `instarec forget --withdraw`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from instarec_assets.backends.serving_store import SqliteRecommendationStore
from instarec_assets.generate import generate_dataset
from instarec_assets.privacy.requests import user_hash
from instarec_assets.warehouse.salt import load_salt, user_key
from instarec_assets_tests.cli_helpers import ephemeral_instance, run_cli  # noqa: F401
from instarec_assets_tests.landing_fixtures import LINES_HEADER, ORDERS_HEADER, write_catalog, write_csv

USER = 7
LATER = "2025-01-27"


def parquet_files(home: Path) -> list[Path]:
    """Every parquet file under the lake, model folders (behind their links) included, once each."""
    found: dict[str, Path] = {}
    for path in sorted((home / "lake").rglob("*.parquet")):
        if not path.name.startswith("."):
            found.setdefault(os.path.realpath(path), path)
    return sorted(found.values())


def user_rows(conn: duckdb.DuckDBPyConnection, path: Path, orders: list[int]) -> tuple[int, int]:
    """(all rows, the user's rows): named by user_id, a graph node, a quarantined record, or an order."""
    columns = set(pq.read_schema(path).names)
    rules = []
    if "user_id" in columns:
        rules.append(f"TRY_CAST(user_id AS BIGINT) = {USER}")
    if "order_id" in columns:
        rules.append(f"TRY_CAST(order_id AS BIGINT) IN ({', '.join(map(str, orders))})")
    if {"node", "id"} <= columns:
        rules.append(f"(node = 'user' AND id = {USER})")
    if "record" in columns:
        rules.append(f"TRY_CAST(json_extract_string(record, '$.user_id') AS BIGINT) = {USER}")
    where = " OR ".join(f"coalesce({rule}, false)" for rule in rules) or "false"
    return conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {where}) FROM read_parquet(?, hive_partitioning = false)",
        [str(path)],
    ).fetchall()[0]


def csv_lines(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split(",") for line in path.read_text().splitlines(keepends=True)[1:]]


def later_batch(folder: Path, order_id: int) -> Path:
    """A batch with one new order of USER (its first, so no gap) and its two lines."""
    write_catalog(folder)
    write_csv(folder / "orders.csv", ORDERS_HEADER, [(order_id, USER, "prior", 1, 2, 9, "")])
    write_csv(
        folder / "order_products__prior.csv", LINES_HEADER, [(order_id, 24852, 1, 0), (order_id, 13176, 2, 0)]
    )
    write_csv(folder / "order_products__train.csv", LINES_HEADER, [])
    return folder


@pytest.mark.slow
def test_forget_removes_the_user_everywhere_and_later_landings_are_quarantined_until_withdrawn(
    capsys, tmp_path: Path, home: Path
):
    summary = generate_dataset(tmp_path / "generated", users=250, seed=3, batches=2)
    for batch in summary.batches:
        status, _, err = run_cli(
            capsys,
            "materialize",
            "--landing",
            str(batch.folder),
            "--partition",
            batch.partition,
            "--home",
            str(home),
        )
        assert status == 0, err
    status, out, _ = run_cli(capsys, "recommend", str(USER), "--home", str(home))
    assert status == 0 and f"for user {USER}" in out[1]
    other_before = run_cli(capsys, "recommend", "8", "-k", "5", "--home", str(home))[1]

    conn = duckdb.connect()
    orders = sorted(
        row[0]
        for row in conn.execute(
            f"SELECT DISTINCT order_id FROM read_parquet(?) WHERE user_id = {USER}",
            [str(home / "lake/clean/clean_orders/*/*/*/*.parquet")],
        ).fetchall()
    )
    assert orders
    before = {path: user_rows(conn, path, orders) for path in parquet_files(home)}
    assert sum(hits for _, hits in before.values()) > 0
    assert any("models" in str(path) and hits for path, (_, hits) in before.items())  # GraphSAGE's nodes
    landing = sorted((home / "landing").rglob("*.csv"))
    lines_before = {path: len(csv_lines(path)) for path in landing}
    salt = load_salt(home).value

    status, out, err = run_cli(
        capsys,
        "forget",
        str(USER),
        "--reason",
        "erasure request",
        "--requested-by",
        "dpo",
        "--home",
        str(home),
    )
    assert status == 0, err
    assert out[0].startswith(f"forgot user {USER} (request ") and "by dpo" in out[0]
    assert any(line.startswith("models trained with this user's data") and "xgboost-" in line for line in out)

    # every parquet file: no row of the user left, and exactly the user's rows gone
    for path, (total, hits) in before.items():
        after_total, after_hits = user_rows(conn, path, orders)
        assert after_hits == 0, path
        assert after_total == total - hits, path
    # the landing copies: no order of the user, no line of those orders; other lines all kept
    order_texts = {str(order) for order in orders}
    removed_lines = 0
    for path in landing:
        lines = csv_lines(path)
        if path.name == "orders.csv":
            assert all(fields[1] != str(USER) for fields in lines), path
        if path.name.startswith(("orders", "order_products")):
            assert all(fields[0] not in order_texts for fields in lines), path
        removed_lines += lines_before[path] - len(lines)
    assert removed_lines > len(orders)
    # the warehouse (rebuilt as of the same batch) and every version of the serving store
    with duckdb.connect(str(home / "warehouse/analyst.duckdb"), read_only=True) as warehouse:
        key = user_key(USER, salt)
        assert (
            warehouse.execute("SELECT count(*) FROM orders WHERE user_key = ?", [key]).fetchall()[0][0] == 0
        )
        assert (
            warehouse.execute(
                f"SELECT count(*) FROM order_products WHERE order_id IN ({', '.join(order_texts)})"
            ).fetchall()[0][0]
            == 0
        )
        assert warehouse.execute("SELECT count(*) FROM orders").fetchall()[0][0] > 0
    store = SqliteRecommendationStore(home / "serving/recommendations.sqlite", read_only=True)
    tables = store.version_tables()
    assert len(tables) >= 2
    for table in tables:
        assert (
            store._reader().execute(f"SELECT count(*) FROM {table} WHERE user_id = ?", (USER,)).fetchone()[0]
            == 0
        )
    store.close()

    status, out, err = run_cli(capsys, "recommend", str(USER), "--home", str(home))
    assert (
        status == 1
        and out == []
        and err == [f"instarec: error: user {USER} has no recommendations in the serving store"]
    )
    assert run_cli(capsys, "recommend", "8", "-k", "5", "--home", str(home))[1] == other_before

    # the audit record: who, when, why, what, the models; a salted hash, never the id or the salt
    records = sorted((home / "lake/raw/privacy/forget_requests").glob("*.json"))
    assert len(records) == 1
    text = records[0].read_text()
    record = json.loads(text)
    assert (
        record["action"] == "forget"
        and record["requested_by"] == "dpo"
        and record["reason"] == "erasure request"
    )
    assert record["user_hash"] == user_hash(USER, salt)
    assert salt not in text and f'"user_id": {USER}' not in text
    kinds = {item["kind"] for item in record["rewritten"]}
    assert kinds == {"parquet", "landing csv", "warehouse", "serving sqlite"}
    assert sum(item["rows_removed"] for item in record["rewritten"] if item["kind"] == "parquet") == sum(
        hits for _, hits in before.values()
    )
    assert {model["model"] for model in record["models_trained_with_user"]} == {
        "xgboost_model",
        "graphsage_model",
    }

    # bad input: one line each, exit 1
    for argv, message in (
        (["forget", "abc"], "USER_ID must be a whole number from 1, not 'abc'"),
        (
            ["forget", str(USER)],
            f"user {USER} has already been forgotten; nothing of theirs is left to remove",
        ),
        (["forget", "999999"], "user 999999 is unknown: no order in the lake or the landing area"),
        (["forget", "--withdraw", "8"], "user 8 has no forget request in force; nothing to withdraw"),
    ):
        status, out, err = run_cli(capsys, *argv, "--home", str(home))
        assert (
            status == 1 and out == [] and len(err) == 1 and err[0].startswith(f"instarec: error: {message}")
        ), err

    # a later landing of the user is quarantined as forgotten, and its record keeps no user id
    status, _, err = run_cli(
        capsys,
        "materialize",
        "--landing",
        str(later_batch(tmp_path / "later", 990001)),
        "--partition",
        LATER,
        "--home",
        str(home),
        "--through",
        "clean",
    )
    assert status == 0, err
    day = "year=2025/month=01/day=27"
    quarantined = conn.execute(
        "SELECT reason, record FROM read_parquet(?)",
        [str(home / f"lake/clean/quarantined_orders/{day}/quarantined_orders.parquet")],
    ).fetchall()
    assert quarantined == [("forgotten", '{"order_id":990001,"user_id":"<forgotten>"}')]
    clean = conn.execute(
        "SELECT count(*) FROM read_parquet(?)",
        [str(home / f"lake/clean/clean_orders/{day}/clean_orders.parquet")],
    ).fetchall()[0][0]
    assert clean == 0
    lines = conn.execute(
        "SELECT reason, count(*) FROM read_parquet(?) GROUP BY ALL",
        [str(home / f"lake/clean/quarantined_order_products/{day}/quarantined_order_products.parquet")],
    ).fetchall()
    assert lines == [("forgotten", 2)]

    # withdrawn: landing the batch again cleans the order
    status, out, err = run_cli(
        capsys, "forget", "--withdraw", str(USER), "--reason", "sent in error", "--home", str(home)
    )
    assert status == 0, err
    assert (
        out[0] == f"withdrew the forget request for user {USER}: later landings of the user are cleaned again"
    )
    assert len(sorted((home / "lake/raw/privacy/forget_requests").glob("*.json"))) == 2
    status, _, err = run_cli(
        capsys,
        "materialize",
        "--landing",
        str(tmp_path / "later"),
        "--partition",
        LATER,
        "--home",
        str(home),
        "--through",
        "clean",
    )
    assert status == 0, err
    rows = conn.execute(
        "SELECT order_id, user_id FROM read_parquet(?)",
        [str(home / f"lake/clean/clean_orders/{day}/clean_orders.parquet")],
    ).fetchall()
    assert rows == [(990001, USER)]
