"""The `instarec` command end to end: one line per asset on success, one `instarec: error:` line and
exit status 1 on an expected failure, never a traceback.

Runs use an ephemeral Dagster instance in place of the persistent one under INSTAREC_HOME/dagster:
the persistent instance's SQLite event log syncs to disk on every event, which makes a run take
over ten seconds on a slow disk; everything else (landing, assets, lake files) is the real thing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3fs import S3FileSystem

from instarec_assets import cli
from instarec_assets.backends.recommendations import ServingStoreError
from instarec_assets.backends.serving_store import DynamoDbRecommendationStore, SqliteRecommendationStore
from instarec_assets.backends.testing import TAG_SCALE, recommendations_table, similar_items_table
from instarec_assets.cli import error_line, main
from instarec_assets.consumption.submission import BASKETS_SCHEMA
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.schemas import ZONES
from instarec_assets_tests.aws_fixtures import REGION
from instarec_assets_tests.cli_helpers import ephemeral_instance, run_cli  # noqa: F401
from instarec_assets_tests.cli_helpers import materialize as materialize_through_clean
from instarec_assets_tests.landing_fixtures import ORDERS, PRIOR_LINES, TRAIN_LINES, write_batch

DAY_1 = "2025-01-06"
ASSETS = (
    "raw_aisles",
    "raw_departments",
    "raw_order_products_prior",
    "raw_order_products_train",
    "raw_orders",
    "raw_products",
    "clean_aisles",
    "quarantined_aisles",
    "clean_departments",
    "quarantined_departments",
    "clean_orders",
    "quarantined_orders",
    "clean_products",
    "quarantined_products",
    "clean_order_products",
    "quarantined_order_products",
)


def materialize(capsys, home: Path, batch: Path, partition: str = DAY_1) -> tuple[int, list[str], list[str]]:
    return materialize_through_clean(capsys, home, batch, partition)


def asset_rows(step_lines: list[str]) -> dict[str, str]:
    """Each asset's row count from `[i/n] step seconds  asset N rows, asset N rows` lines."""
    found = re.findall(r"(\w+) ([\d,]+) rows", " ".join(line.split("s  ", 1)[1] for line in step_lines))
    return {asset: rows.replace(",", "") for asset, rows in found}


def test_good_batch_prints_one_line_per_step_and_exits_0(capsys, home: Path, tmp_path: Path):
    batch = write_batch(tmp_path / "batch", success=False)
    status, out, err = materialize(capsys, home, batch)
    assert (status, err) == (0, [])
    assert out[0] == f"landed {batch} as partition {DAY_1} at {home.resolve()}/landing/{DAY_1}"
    assert out[1] == f"running 6 steps for partition {DAY_1} through clean"
    assert [line.split()[0] for line in out[2:]] == [f"[{i}/6]" for i in range(1, 7)]
    rows = asset_rows(out[2:])
    assert sorted(rows) == sorted(ASSETS)
    assert rows["clean_orders"] == str(len(ORDERS))
    assert rows["clean_order_products"] == str(len(PRIOR_LINES) + len(TRAIN_LINES))
    assert rows["quarantined_orders"] == "0"
    assert (home / "landing" / DAY_1 / "_SUCCESS").exists()  # complete only now, after the run


def test_missing_column_exits_1_with_one_error_line_naming_file_and_column(
    capsys, home: Path, tmp_path: Path
):
    batch = write_batch(tmp_path / "batch", success=False)
    orders = batch / "orders.csv"
    orders.write_text("\n".join(",".join(line.split(",")[:-1]) for line in orders.read_text().splitlines()))
    status, _, err = materialize(capsys, home, batch)
    assert status == 1
    assert len(err) == 1
    assert err[0].startswith(
        f"instarec: error: {batch}/orders.csv: missing column(s) days_since_prior_order (expected: "
    )


def test_missing_file_exits_1_naming_the_file(capsys, home: Path, tmp_path: Path):
    batch = write_batch(tmp_path / "batch", success=False)
    (batch / "order_products__train.csv").unlink()
    status, _, err = materialize(capsys, home, batch)
    assert status == 1
    assert err == [
        f"instarec: error: {batch}/order_products__train.csv: file is missing (also looked for .csv.gz)"
    ]


def test_failed_run_leaves_the_landing_copy_incomplete_and_names_the_source_folder(
    capsys, home: Path, tmp_path: Path
):
    """A batch is marked complete (`_SUCCESS`) only after its run succeeds, so the landing sensor
    never takes a broken batch for a complete one; re-landing a broken copy drops an earlier marker."""
    batch = write_batch(tmp_path / "batch", success=False)
    landed = home / "landing" / DAY_1
    assert materialize(capsys, home, batch)[0] == 0
    assert (landed / "_SUCCESS").exists()
    (batch / "orders.csv").write_bytes(b"")
    (batch / "products.csv").write_bytes(b"")
    status, out, err = materialize(capsys, home, batch)
    assert status == 1
    assert out == [
        f"landed {batch} as partition {DAY_1} at {landed.resolve()}",
        f"running 6 steps for partition {DAY_1} through clean",
    ]  # the raw step failed: no step line
    assert err == [
        f"instarec: error: {batch}/orders.csv: file is empty (expected a header line); "
        f"{batch}/products.csv: file is empty (expected a header line)"
    ]
    assert (landed / "orders.csv").exists() and not (landed / "_SUCCESS").exists()


def test_bad_rows_succeed_and_are_quarantined_in_the_lake(capsys, home: Path, tmp_path: Path):
    orders = [*ORDERS[:-1], (203, 2, "test", 3, 9, 16, "30.0")]
    batch = write_batch(tmp_path / "batch", orders=orders, success=False)
    status, out, err = materialize(capsys, home, batch)
    assert (status, err) == (0, [])
    assert asset_rows(out[2:])["quarantined_orders"] == "1"
    quarantine = LakeLocations(home=str(home)).partition_uri("clean", "quarantined_orders", DAY_1)
    assert quarantine.endswith(
        "lake/clean/quarantined_orders/year=2025/month=01/day=06/quarantined_orders.parquet"
    )
    rows = duckdb.sql(f"SELECT source_file, source_row, reason, record FROM '{quarantine}'").fetchall()
    assert len(rows) == 1
    source_file, source_row, reason, record = rows[0]
    assert source_file.endswith(f"landing/{DAY_1}/orders.csv") and source_row == len(ORDERS)
    assert reason == "order_dow: out of range 0..6: '9'"
    assert '"order_id":"203"' in record


def test_status_shows_batches_tables_models_warehouse_and_serving(capsys, home: Path, tmp_path: Path):
    status, out, err = run_cli(capsys, "status", "--home", str(home))
    assert (status, err) == (0, [])
    assert out[0] == f"instarec lake at {home.resolve()}"
    assert "no landing batch yet" in out and "no table in the lake yet" in out
    assert out[-1] == "serving: no version loaded yet"

    materialize(capsys, home, write_batch(tmp_path / "batch", success=False))
    status, out, err = run_cli(capsys, "status", "--home", str(home))
    assert (status, err) == (0, [])
    assert out[2].split() == ["BATCH", "STATE", "DETAIL"]
    # Materialised only through clean: the batch is incomplete, and says what is missing.
    assert out[3].split()[:2] == [DAY_1, "incomplete"] and "not materialised since the landing" in out[3]
    header = next(i for i, line in enumerate(out) if line.split()[:2] == ["ZONE", "TABLE"])
    assert out[header].split() == ["ZONE", "TABLE", "BATCHES", "LATEST", "ROWS", "(LATEST)"]
    rows = {line.split()[1]: line.split() for line in out[header + 1 :] if line.strip()[:3] in ("raw", "cle")}
    assert set(rows) == set(ASSETS)
    assert rows["clean_orders"][2:] == ["1", DAY_1, f"{len(ORDERS):,}"]

    status, out, err = run_cli(capsys, "status", "--json", "--home", str(home))
    assert (status, err) == (0, [])
    report = json.loads("\n".join(out))
    assert [(batch["partition"], batch["state"]) for batch in report["batches"]] == [(DAY_1, "incomplete")]
    orders = next(table for table in report["tables"] if table["table"] == "clean_orders")
    assert (orders["latest_partition"], orders["latest_rows"]) == (DAY_1, len(ORDERS))
    assert report["serving"] is None


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("instarec ")


def test_status_into_a_closed_pipe_ends_quietly(home: Path):
    """`instarec status | true`: the reader is gone before the first line; no error, no traceback."""
    done = subprocess.run(
        f"set -o pipefail; {sys.executable} -m instarec_assets.cli status --home {home} | true",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("partition", "message"),
    [
        ("2025-1-6", "partition key '2025-1-6' is not a date in YYYY-MM-DD form"),
        ("2025-02-30", "partition key '2025-02-30' is not a valid date: day is out of range for month"),
    ],
)
def test_invalid_partition_exits_1_with_one_line_and_lands_nothing(
    capsys, home: Path, tmp_path: Path, partition: str, message: str
):
    batch = write_batch(tmp_path / "batch", success=False)
    status, out, err = materialize(capsys, home, batch, partition)
    assert (status, out) == (1, [])
    assert len(err) == 1 and err[0].startswith(f"instarec: error: {message}")
    assert not (home / "landing").exists()


def test_missing_landing_folder_exits_1_with_one_line(capsys, home: Path, tmp_path: Path):
    status, _, err = materialize(capsys, home, tmp_path / "nowhere")
    assert (status, err) == (1, [f"instarec: error: {tmp_path / 'nowhere'}: landing folder does not exist"])


# -- expected failures of the other commands: one line, never a traceback; bugs keep theirs -----------


def write_next_basket(home: Path) -> Path:
    """A next_basket partition as the asset stores it, so `instarec submission` has something to write."""
    path = Path(LakeLocations(home=str(home)).partition_uri("consumption", "next_basket", DAY_1))
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {"order_id": [7, 8], "user_id": [1, 2], "products": ["24852 13176", "None"]}
    rows |= {"n_products": [2, 0], "include_none": [False, True], "expected_f1": [0.5, 1.0]}
    pq.write_table(pa.table(rows, schema=BASKETS_SCHEMA), path)
    return path


def test_submission_writes_the_latest_next_basket_as_kaggle_csv(capsys, home: Path, tmp_path: Path):
    write_next_basket(home)
    out = tmp_path / "submission.csv"
    status, lines, err = run_cli(capsys, "submission", "--out", str(out), "--home", str(home))
    assert (status, err) == (0, [])
    assert lines == [f"wrote 2 test orders from partition {DAY_1} to {out}"]
    assert out.read_text() == "order_id,products\n7,24852 13176\n8,None\n"


def test_submission_into_an_existing_directory_names_the_path(capsys, home: Path, tmp_path: Path):
    write_next_basket(home)
    status, out, err = run_cli(capsys, "submission", "--out", str(tmp_path), "--home", str(home))
    assert (status, out, err) == (1, [], [f"instarec: error: {tmp_path}: Is a directory"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_submission_into_a_read_only_directory_names_the_path(capsys, home: Path, tmp_path: Path):
    write_next_basket(home)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    status, out, err = run_cli(capsys, "submission", "--out", str(locked / "s.csv"), "--home", str(home))
    assert (status, out, err) == (1, [], [f"instarec: error: {locked / 's.csv'}: Permission denied"])


def test_submission_without_next_basket_says_to_materialize(capsys, home: Path, tmp_path: Path):
    status, out, err = run_cli(capsys, "submission", "--out", str(tmp_path / "s.csv"), "--home", str(home))
    assert (status, out) == (1, [])
    assert err == ["instarec: error: no next_basket partition yet: materialize a landing batch first"]


def test_recommend_without_a_serving_store_exits_1_naming_it(capsys, home: Path):
    status, out, err = run_cli(capsys, "recommend", "1", "--home", str(home))
    store = home.resolve() / "serving" / "recommendations.sqlite"
    assert (status, out) == (1, [])
    assert err == [f"instarec: error: serving store {store} does not exist; load recommendations first"]


def test_recommend_on_a_corrupt_serving_file_exits_1_naming_it(capsys, home: Path):
    store = home.resolve() / "serving" / "recommendations.sqlite"
    store.parent.mkdir()
    store.write_bytes(b"not a database, " * 512)
    status, out, err = run_cli(capsys, "recommend", "1", "--home", str(home))
    assert (status, out, err) == (1, [], [f"instarec: error: serving store {store}: file is not a database"])


def _serving_store(home: Path, **kwargs) -> SqliteRecommendationStore:
    return SqliteRecommendationStore(home.resolve() / "serving" / "recommendations.sqlite", **kwargs)


def _load(store, tag: int, batch: str):
    table = recommendations_table(range(1, 4), tag=tag).drop_columns(["model_version"])
    return store.load(table, f"xgb-{tag}", batch=batch)


def test_recommend_names_the_serving_version_its_batch_and_model(capsys, home: Path):
    with _serving_store(home) as store:
        _load(store, 1, "2024-01-01")
        report = _load(store, 2, "2024-01-15")
    status, out, err = run_cli(capsys, "recommend", "2", "-k", "2", "--home", str(home))
    assert (status, err) == (0, [])
    assert out[0] == f"serving version {report.version} (built from batch 2024-01-15, model xgb-2)"
    assert out[1] == "Top 2 for user 2 (model xgb-2):"
    assert len(out) == 4


def test_recommend_marks_explore_and_popular_items(capsys, home: Path):
    # a cold-start list: the user's one explore item, then popular items
    table = recommendations_table([5], ranks=3).drop_columns(["model_version", "explore"])
    table = table.append_column("explore", pa.array([True, False, False]))
    table = table.append_column("source", pa.array(["explore", "popular", "popular"]))
    with _serving_store(home) as store:
        store.load(table, "xgb-1", batch="2024-01-01")
    status, out, err = run_cli(capsys, "recommend", "5", "-k", "3", "--home", str(home))
    assert (status, err) == (0, [])
    assert out[2].endswith("  [explore: new to this shopper]")
    assert all(line.endswith("  [popular: cold start, no history to score yet]") for line in out[3:5])


def test_similar_lists_the_products_similar_items_from_the_active_version(capsys, home: Path):
    with _serving_store(home) as store:
        table = recommendations_table(range(1, 4)).drop_columns(["model_version"])
        report = store.load(table, "xgb-1", batch="2024-01-01", similar_items=similar_items_table([42]))
    status, out, err = run_cli(capsys, "similar", "42", "--k", "2", "--home", str(home))
    assert (status, err) == (0, [])
    assert out == [
        f"serving version {report.version}",
        "Customers who buy product 42 also buy:",
        f"   1. Similar {TAG_SCALE + 4201}, score 0.500 (product {TAG_SCALE + 4201}; aisle 1, department 1)",
        f"   2. Similar {TAG_SCALE + 4202}, score 0.333 (product {TAG_SCALE + 4202}; aisle 2, department 1)",
    ]
    status, out, err = run_cli(capsys, "similar", "43", "--home", str(home))
    assert (status, out, err) == (
        1,
        [],
        ["instarec: error: product 43 has no similar items in the serving store"],
    )
    status, out, err = run_cli(capsys, "similar", "42", "--k", "0", "--home", str(home))
    assert (status, out, err) == (1, [], ["instarec: error: --k must be from 1 to 20, not 0"])


def test_serving_versions_lists_the_retained_versions_with_the_active_one_marked(capsys, home: Path):
    with _serving_store(home, keep_versions=2) as store:
        reports = [_load(store, tag, f"2024-01-0{tag}") for tag in (1, 2, 3)]
        store.activate(reports[1].version)
    status, out, err = run_cli(capsys, "serving", "versions", "--home", str(home))
    assert (status, err) == (0, [])
    assert out[0].split() == ["version", "kind", "base", "batch", "model", "loaded", "at", "users", "items"]
    assert out[1].split()[:6] == [reports[2].version, "full", "-", "2024-01-03", "xgb-3", out[1].split()[5]]
    assert out[1].split()[-2:] == ["3", "30"]
    assert out[2].startswith("*") and out[2].split()[1:6] == [
        reports[1].version,
        "full",
        "-",
        "2024-01-02",
        "xgb-2",
    ]
    # version 1 is no longer retained
    assert out[3:] == [
        "* active: what readers see now; a delta holds only its users, the rest read through its base"
    ]


def test_serving_versions_shows_a_delta_and_its_base(capsys, home: Path):
    with _serving_store(home) as store:
        full = _load(store, 1, "2024-01-01")
        table = recommendations_table([2], tag=2).drop_columns(["model_version"])
        delta = store.load(table, "xgb-2", batch="2024-01-08", delta=True)
    status, out, err = run_cli(capsys, "serving", "versions", "--home", str(home))
    assert (status, err) == (0, [])
    assert out[1].split()[:5] == ["*", delta.version, "delta", full.version, "2024-01-08"]
    assert out[1].split()[-2:] == ["1", "10"]  # what the delta itself holds
    assert out[2].split()[:4] == [full.version, "full", "-", "2024-01-01"]
    status, out, err = run_cli(capsys, "status", "--home", str(home))
    assert (status, err) == (0, [])
    assert out[-1].startswith(
        f"serving: version {delta.version} active (batch 2024-01-08, model xgb-2, 1 user updated over "
        f"{full.version}) in "
    )


def test_serving_versions_of_an_empty_or_missing_store(capsys, home: Path):
    path = home.resolve() / "serving" / "recommendations.sqlite"
    status, out, err = run_cli(capsys, "serving", "versions", "--home", str(home))
    assert (status, out) == (1, [])
    assert err == [f"instarec: error: serving store {path} does not exist; load recommendations first"]
    _serving_store(home).close()
    status, out, err = run_cli(capsys, "serving", "versions", "--home", str(home))
    assert (status, out, err) == (
        0,
        [f"the serving store {path} holds no version yet: load recommendations first"],
        [],
    )


def test_serving_activate_switches_readers_and_prints_one_line(capsys, home: Path):
    with _serving_store(home) as store:
        first = _load(store, 1, "2024-01-01")
        second = _load(store, 2, "2024-01-15")
    status, out, err = run_cli(capsys, "serving", "activate", first.version, "--home", str(home))
    assert (status, err) == (0, [])
    assert out == [
        f"activated serving version {first.version} (built from batch 2024-01-01, model xgb-1); "
        f"was {second.version}"
    ]
    status, out, _ = run_cli(capsys, "recommend", "1", "--home", str(home))
    assert (status, out[0]) == (
        0,
        f"serving version {first.version} (built from batch 2024-01-01, model xgb-1)",
    )
    with _serving_store(home, read_only=True) as reader:
        assert reader.current_version() == first.version


def test_serving_activate_of_an_unknown_version_exits_1_with_one_line(capsys, home: Path):
    path = home.resolve() / "serving" / "recommendations.sqlite"
    status, out, err = run_cli(capsys, "serving", "activate", "nope", "--home", str(home))
    assert (status, out) == (1, [])
    assert err == [f"instarec: error: serving store {path} does not exist; load recommendations first"]
    assert not path.exists()
    with _serving_store(home) as store:
        report = _load(store, 1, "2024-01-01")
    status, out, err = run_cli(capsys, "serving", "activate", "nope", "--home", str(home))
    assert (status, out) == (1, [])
    assert err == [
        f"instarec: error: serving store {path}: version 'nope' is not a retained version "
        f"(retained: {report.version})"
    ]


def test_serving_commands_on_the_dynamodb_store(
    capsys, aws_locations: LakeLocations, aws_env: str, monkeypatch: pytest.MonkeyPatch
):
    table_name = f"instarec-cli-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("INSTAREC_DYNAMODB_TABLE", table_name)
    store = DynamoDbRecommendationStore(table_name, endpoint_url=aws_env, region_name=REGION)
    store.ensure_table()
    first = _load(store, 1, "2024-01-01")
    second = _load(store, 2, "2024-01-15")

    status, out, err = run_cli(capsys, "recommend", "1")
    assert (status, err, out[0]) == (
        0,
        [],
        f"serving version {second.version} (built from batch 2024-01-15, model xgb-2)",
    )
    status, out, err = run_cli(capsys, "serving", "versions")
    assert (status, err, len(out)) == (0, [], 4)
    assert out[1].startswith("*") and out[1].split()[1] == second.version
    assert out[2].split()[0] == first.version
    status, out, err = run_cli(capsys, "serving", "activate", first.version)
    assert (status, err) == (0, [])
    assert out == [
        f"activated serving version {first.version} (built from batch 2024-01-01, model xgb-1); "
        f"was {second.version}"
    ]
    assert store.current_version() == first.version
    status, out, err = run_cli(capsys, "serving", "activate", "nope")
    assert (status, out, len(err)) == (1, [], 1)
    assert err[0].startswith(
        f"instarec: error: serving store DynamoDB table {table_name}: version 'nope' is not a retained"
    )


def test_recommend_with_a_missing_dynamodb_table_names_the_table(
    capsys, aws_locations: LakeLocations, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("INSTAREC_DYNAMODB_TABLE", "instarec-no-such-table")
    status, out, err = run_cli(capsys, "recommend", "1")
    assert (status, out) == (1, [])
    assert err == [
        "instarec: error: DynamoDB table 'instarec-no-such-table' (us-east-1): AWS GetItem failed: "
        "ResourceNotFoundException: Requested resource not found"
    ]


def test_submission_with_a_missing_consumption_bucket_names_it(
    capsys, aws_locations: LakeLocations, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("INSTAREC_CONSUMPTION_BUCKET", "instarec-no-such-bucket")
    status, out, err = run_cli(capsys, "submission", "--out", str(tmp_path / "s.csv"))
    assert (status, out) == (1, [])
    assert err == [
        "instarec: error: consumption zone s3://instarec-no-such-bucket: The specified bucket does not exist"
    ]


def test_status_with_a_missing_zone_bucket_names_it_instead_of_calling_the_lake_empty(
    capsys, aws_locations: LakeLocations, monkeypatch: pytest.MonkeyPatch
):
    status, out, err = run_cli(capsys, "status")
    assert (status, err) == (0, [])
    zones = ", ".join(aws_locations.zone_uri(zone) for zone in ZONES)
    assert out[:3] == [f"instarec lake at {zones}", "", "no landing batch yet"]
    assert "no table in the lake yet" in out
    monkeypatch.setenv("INSTAREC_CLEAN_BUCKET", "instarec-no-such-bucket")
    S3FileSystem.clear_instance_cache()
    status, out, err = run_cli(capsys, "status")
    assert (status, out) == (1, [])
    assert err == [
        "instarec: error: s3://instarec-no-such-bucket (INSTAREC_CLEAN_BUCKET, the clean zone) does not "
        "exist or cannot be read with these credentials"
    ]


@pytest.mark.parametrize(
    ("argv", "subject"),
    [
        (("recommend", "1"), "DynamoDB table 'instarec-recommendations' (us-east-1)"),
        (("submission", "--out", "unused.csv"), "consumption zone s3://"),
    ],
)
def test_aws_commands_without_credentials_exit_1_with_one_line(
    capsys, aws_locations: LakeLocations, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv, subject
):
    monkeypatch.setenv("INSTAREC_DYNAMODB_TABLE", "instarec-recommendations")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # s3fs caches filesystems by their arguments: drop an earlier test's (with its credentials) and,
    # afterwards, this one's (without any), which later tests on the same moto server would reuse.
    S3FileSystem.clear_instance_cache()
    try:
        status, out, err = run_cli(capsys, *argv)
    finally:
        S3FileSystem.clear_instance_cache()
    assert (status, out, len(err)) == (1, [], 1)
    assert err[0].startswith(f"instarec: error: {subject}") and err[0].endswith(
        ": Unable to locate credentials"
    )


def test_error_line_formats_expected_failures_and_leaves_bugs_alone():
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/out.csv")
    assert error_line(denied) == "/data/out.csv: Permission denied"
    assert error_line(ServingStoreError("the store is gone")) == "the store is gone"
    assert error_line(duckdb.IOException("IO Error: cannot open\nLINE 1: x\n ^")) == "IO Error: cannot open"
    assert error_line(KeyError("user_id")) is None
    assert error_line(TypeError("unsupported operand")) is None


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, home: Path):
    def broken(args) -> None:
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli, "cmd_status", broken)
    with pytest.raises(KeyError, match="a bug, not a user error"):
        main(["status", "--home", str(home)])


@pytest.mark.slow
def test_demo_runs_every_batch_then_reports_status_and_a_users_top_three(capsys, tmp_path: Path):
    """`make demo`'s command end to end: both batches, the status report, a sample user's list."""
    home = tmp_path / "demo-home"
    status, out, err = run_cli(capsys, "demo", "--home", str(home), "--users", "300")
    assert status == 0, err
    assert err == []
    assert sum(line.startswith("running 16 steps for partition") for line in out) == 2
    assert f"instarec lake at {home.resolve()}" in out
    assert "Top 3 for user 1 (model xgboost-" in out[-4] and out[-1].startswith("   3. "), out[-6:]
