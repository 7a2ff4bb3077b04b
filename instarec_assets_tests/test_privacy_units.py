"""The forget procedure's parts on small hand-made data: the clean step's forget list, the request log,
the SQLite store's erasure down to the file's bytes, the matching rules for unsplittable lines, the
job in the definitions, and the command's bad input."""

from __future__ import annotations

import importlib
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance

from instarec_assets.backends.recommendations import ServingStoreError
from instarec_assets.backends.serving_store import SqliteRecommendationStore
from instarec_assets.backends.testing import recommendations_table
from instarec_assets.cli import main
from instarec_assets.definitions import build_definitions
from instarec_assets.lake.clean_orders import ForgetList, clean_orders
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.partitions import HISTORY_POOL
from instarec_assets.pipeline import forget as pipeline_forget
from instarec_assets.pipeline import runner
from instarec_assets.privacy.lake_rewrite import rewrite_parquet, user_order_ids
from instarec_assets.privacy.requests import (
    FORGET,
    WITHDRAW,
    AuditRecord,
    append_record,
    forgotten_hashes,
    read_records,
    user_hash,
)
from instarec_assets_tests.test_lake_bad_input import ORDERS_HEADER, land, quarantined

SALT = "a-test-salt-of-enough-length"


def test_clean_step_quarantines_a_forgotten_users_orders_as_forgotten_without_the_id(tmp_path: Path):
    conn = duckdb.connect()
    body = "101,1,prior,1,2,8,\n201,2,prior,1,3,9,\n202,2,prior,2,3,9,x\n"  # 202 is bad in another way too
    raw = land(conn, tmp_path, "orders", ORDERS_HEADER + body)
    forget = ForgetList(salt=SALT, user_hashes=frozenset({user_hash(2, SALT)}))
    result = clean_orders(conn, str(raw.staged.path), [], tmp_path / "clean", forget)
    assert conn.execute(
        "SELECT order_id, user_id FROM read_parquet(?)", [str(result.clean.path)]
    ).fetchall() == [(101, 1)]
    assert quarantined(conn, result) == [
        (2, "forgotten", {"order_id": 201, "user_id": "<forgotten>"}),
        (3, "forgotten", {"order_id": 202, "user_id": "<forgotten>"}),
    ]
    assert result.accounting.balanced
    # the salt is a bound parameter: a connection's stored SQL never holds it
    unforgotten = clean_orders(conn, str(raw.staged.path), [], tmp_path / "clean-2", ForgetList())
    assert unforgotten.accounting.clean_rows == 2


def test_the_latest_request_decides_and_records_are_new_objects(tmp_path: Path):
    locations = LakeLocations(env="local", home=str(tmp_path))
    hashed = user_hash(5, SALT)
    assert forgotten_hashes(read_records(locations)) == frozenset()
    first = append_record(locations, AuditRecord(FORGET, hashed, "dpo", "asked"))
    assert forgotten_hashes(read_records(locations)) == {hashed}
    second = append_record(locations, AuditRecord(WITHDRAW, hashed, "dpo", "sent in error"))
    assert forgotten_hashes(read_records(locations)) == frozenset()
    append_record(locations, AuditRecord(FORGET, hashed, "dpo", "asked again"))
    assert forgotten_hashes(read_records(locations)) == {hashed}
    assert first != second and Path(first).parent == tmp_path.resolve() / "lake/raw/privacy/forget_requests"
    assert len(read_records(locations)) == 3


def test_sqlite_forget_removes_the_user_from_every_version_and_from_the_files_bytes(tmp_path: Path):
    path = tmp_path / "serving.sqlite"
    store = SqliteRecommendationStore(path)
    table = recommendations_table([1, 2, 3], tag=1)
    names = table.column("product_name").to_pylist()
    user_2_name = names[10]  # the user's first item
    store.load(table, "model-1", batch="2025-01-06")
    store.load(recommendations_table([1, 2, 3], tag=2), "model-2", batch="2025-01-13")
    assert store.forget_user(2) == {record.version: 10 for record in store.versions()}
    assert store.top_k(2) is None and store.top_k(1) is not None
    assert {record.users for record in store.versions()} == {2}
    store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("serving.sqlite"))
    assert user_2_name.encode() not in data and names[0].encode() in data
    with pytest.raises(ServingStoreError, match="whole number from 1"):
        store.forget_user(0)


def test_unsplittable_lines_and_quarantined_records_of_the_user_are_matched(tmp_path: Path):
    locations = LakeLocations(env="local", home=str(tmp_path))
    raw = tmp_path / "lake/raw/raw_orders/year=2025/month=01/day=06/raw_orders.parquet"
    raw.parent.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "order_id": ["11", None, "31"],
                "user_id": ["1", None, "3"],
                "_raw_line": [None, '21,2,prior,"1', None],
            }
        ),
        raw,
    )
    lines = (
        tmp_path
        / "lake/clean/quarantined_order_products/year=2025/month=01/day=06/quarantined_order_products.parquet"
    )
    lines.parent.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "reason": ["a", "b", "c"],
                "record": ['{"order_id": "21", "product_id": "5"}', "21,6,1", "11,7,1"],
            }
        ),
        lines,
    )
    conn = duckdb.connect()
    assert user_order_ids(conn, locations, 2) == [21.0]
    rewrite = rewrite_parquet(conn, locations, str(lines), 2)
    assert rewrite is not None and (rewrite.rows_removed, rewrite.rows_kept) == (2, 1)
    assert pq.read_table(lines).column("record").to_pylist() == ["11,7,1"]
    assert rewrite_parquet(conn, locations, str(raw), 2).rows_removed == 1
    assert rewrite_parquet(conn, locations, str(raw), 2) is None  # nothing left: the file is left alone


def test_forget_job_is_in_the_definitions_and_runs_in_the_history_pool(locations: LakeLocations):
    defs = build_definitions(locations)
    job = defs.resolve_job_def("forget_shopper")
    [node] = job.graph.node_defs
    assert node.name == "forget_shopper_op" and node.pool == HISTORY_POOL
    assert "forget_list" in defs.resources


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["forget", "abc"], "USER_ID must be a whole number from 1, not 'abc'"),
        (["forget", "-3"], "USER_ID must be a whole number from 1, not '-3'"),
        (
            ["forget", "12"],
            "user 12 is unknown: no order in the lake or the landing area, no row in the warehouse",
        ),
        (["forget", "--withdraw", "12"], "user 12 has no forget request in force; nothing to withdraw"),
    ],
)
def test_bad_forget_input_is_one_line_and_exit_1(
    home: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
):
    assert main([*argv, "--home", str(home)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith(f"instarec: error: {message}")


def test_forget_opens_the_instance_of_its_own_run_not_one_patched_in_when_it_was_imported(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The cause of a flaky `no such table: snapshots`: pipeline/forget.py once copied
    `runner.dagster_instance` at import, so when a test that patches it (test_privacy_forget) was the
    first to import the module, every later forget in that worker ran on that test's disposed instance."""
    with DagsterInstance.ephemeral() as earlier_tests_instance:
        pass
    monkeypatch.setattr(runner, "dagster_instance", lambda locations: earlier_tests_instance)
    importlib.reload(pipeline_forget)  # first imported while an earlier test's patch was in force
    monkeypatch.undo()
    assert main(["forget", "12", "--home", str(home)]) == 1
    err = capsys.readouterr().err
    assert "no such table" not in err and err.startswith("instarec: error: user 12 is unknown")
