"""Tests for the synthetic Instacart-format generator: file format, history invariants, calibration,
determinism and the batch increments the landing sensor consumes."""

from __future__ import annotations

import datetime
import gzip
import re
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from instarec_assets.generate import FILES, SUCCESS_MARKER, generate_dataset

HEADERS = {
    "orders.csv": "order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order",
    "order_products__prior.csv": "order_id,product_id,add_to_cart_order,reordered",
    "order_products__train.csv": "order_id,product_id,add_to_cart_order,reordered",
    "products.csv": "product_id,product_name,aisle_id,department_id",
    "aisles.csv": "aisle_id,aisle",
    "departments.csv": "department_id,department",
}
ORDER_LINE = re.compile(r"^\d+,\d+,(prior|train|test),\d+,[0-6],(0\d|1\d|2[0-3]),(\d{1,2}\.0)?$")


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / name)


def _lines_with_orders(folders: list[Path]) -> pd.DataFrame:
    orders = pd.concat([_read(folder, "orders.csv") for folder in folders])
    lines = pd.concat(
        [_read(folder, f"order_products__{name}.csv") for folder in folders for name in ("prior", "train")]
    )
    return lines.merge(orders[["order_id", "user_id", "order_number"]], on="order_id", how="left")


def _expected_reordered(lines: pd.DataFrame) -> np.ndarray:
    first = lines.groupby(["user_id", "product_id"]).order_number.transform("min")
    return (lines.order_number > first).astype(int).to_numpy()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    summary = generate_dataset(tmp_path_factory.mktemp("snapshot"), users=400, seed=7)
    return summary.batches[0].folder


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    summary = generate_dataset(tmp_path_factory.mktemp("calibration"), users=1000, seed=5)
    return summary.batches[0].folder


@pytest.fixture(scope="module")
def increments(tmp_path_factory: pytest.TempPathFactory):
    return generate_dataset(tmp_path_factory.mktemp("increments"), users=300, seed=11, batches=3)


def test_folder_holds_six_files_with_kaggle_headers_and_success_marker_last(snapshot: Path) -> None:
    assert snapshot.name == "2025-01-06"
    assert sorted(path.name for path in snapshot.iterdir()) == sorted([*FILES, SUCCESS_MARKER])
    for name, header in HEADERS.items():
        with (snapshot / name).open() as handle:
            assert handle.readline().rstrip("\n") == header
    marker = snapshot / SUCCESS_MARKER
    assert marker.stat().st_size == 0
    assert all(marker.stat().st_mtime_ns >= (snapshot / name).stat().st_mtime_ns for name in FILES)


def test_orders_rows_use_the_real_text_conventions(snapshot: Path) -> None:
    rows = (snapshot / "orders.csv").read_text().splitlines()[1:]
    assert all(ORDER_LINE.match(row) for row in rows)
    first_orders = [row for row in rows if row.split(",")[3] == "1"]
    assert first_orders and all(row.endswith(",") for row in first_orders)
    assert all(not row.endswith(",") for row in rows if row.split(",")[3] != "1")


def test_pandas_and_duckdb_read_orders_the_same(snapshot: Path) -> None:
    by_pandas = _read(snapshot, "orders.csv")
    by_duckdb = duckdb.read_csv(str(snapshot / "orders.csv"), dtype={"order_hour_of_day": "INTEGER"}).df()
    assert by_pandas.days_since_prior_order.dtype == np.float64
    assert list(by_pandas.columns) == list(by_duckdb.columns)
    for column in by_pandas.columns:
        assert by_pandas[column].astype(str).tolist() == by_duckdb[column].astype(str).tolist()


def test_every_user_has_4_to_100_orders_and_ends_with_train_or_test(snapshot: Path) -> None:
    orders = _read(snapshot, "orders.csv").sort_values(["user_id", "order_number"])
    assert sorted(orders.user_id.unique()) == list(range(1, 401))
    counts = orders.groupby("user_id").size()
    assert counts.between(4, 100).all()
    assert (orders.groupby("user_id").order_number.max() == counts).all()
    last = orders.groupby("user_id").tail(1)
    assert set(last.eval_set) == {"train", "test"}
    assert (orders.drop(last.index).eval_set == "prior").all()
    assert 0.5 < (last.eval_set == "train").mean() < 0.78


def test_order_ids_are_unique_and_shuffled_across_users(snapshot: Path) -> None:
    orders = _read(snapshot, "orders.csv")
    assert orders.order_id.is_unique
    assert sorted(orders.order_id) == list(range(1, len(orders) + 1))
    increasing = orders.groupby("user_id").order_id.apply(lambda ids: ids.is_monotonic_increasing)
    assert increasing.mean() < 0.2


def test_lines_belong_to_the_right_files_and_test_orders_have_none(snapshot: Path) -> None:
    orders = _read(snapshot, "orders.csv").set_index("order_id")
    prior = _read(snapshot, "order_products__prior.csv")
    train = _read(snapshot, "order_products__train.csv")
    assert (orders.loc[prior.order_id, "eval_set"] == "prior").all()
    assert (orders.loc[train.order_id, "eval_set"] == "train").all()
    assert set(orders.index[orders.eval_set == "prior"]) == set(prior.order_id)
    assert set(orders.index[orders.eval_set == "train"]) == set(train.order_id)


def test_reordered_is_one_exactly_when_bought_in_an_earlier_order(snapshot: Path) -> None:
    lines = _lines_with_orders([snapshot])
    assert not lines.duplicated(["order_id", "product_id"]).any()
    assert (lines.reordered.to_numpy() == _expected_reordered(lines)).all()
    assert (lines.loc[lines.order_number == 1, "reordered"] == 0).all()


def test_add_to_cart_order_counts_from_one_within_sorted_orders(snapshot: Path) -> None:
    for name in ("prior", "train"):
        lines = _read(snapshot, f"order_products__{name}.csv")
        assert lines.order_id.is_monotonic_increasing
        position = lines.groupby("order_id").cumcount() + 1
        assert (lines.add_to_cart_order == position).all()
        assert set(lines.reordered.unique()) <= {0, 1}


def test_days_since_prior_order_is_empty_only_on_first_orders(snapshot: Path) -> None:
    orders = _read(snapshot, "orders.csv")
    days = orders.days_since_prior_order
    assert (days.isna() == (orders.order_number == 1)).all()
    assert days.dropna().between(0, 30).all()
    assert (days.dropna() % 1 == 0).all()


def test_weekday_advances_by_days_since_prior_order_below_the_cap(snapshot: Path) -> None:
    orders = _read(snapshot, "orders.csv").sort_values(["user_id", "order_number"])
    previous = orders.groupby("user_id").order_dow.shift()
    known = previous.notna() & (orders.days_since_prior_order < 30)
    assert known.sum() > 1000
    assert ((previous[known] + orders.days_since_prior_order[known]) % 7 == orders.order_dow[known]).all()


def test_figures_are_calibrated_to_the_real_dataset(calibration: Path) -> None:
    orders = _read(calibration, "orders.csv")
    prior = _read(calibration, "order_products__prior.csv")
    train = _read(calibration, "order_products__train.csv")
    basket = prior.groupby("order_id").size()
    assert 0.5 < prior.reordered.mean() < 0.68
    assert 0.5 < train.reordered.mean() < 0.72
    assert 7 < basket.mean() < 13
    assert 6 <= basket.median() <= 10
    assert 15 <= basket.quantile(0.9) <= 25
    assert basket.max() <= 145
    per_user = orders.groupby("user_id").size()
    assert 7 <= per_user.median() <= 13
    assert 13 < per_user.mean() < 20
    days = orders.days_since_prior_order.dropna()
    assert 9 < days.mean() < 13.5
    share = days.value_counts(normalize=True)
    assert 0.06 < share[30] < 0.15
    assert share[7] > max(share[6], share[8])
    weekday = orders.order_dow.value_counts(normalize=True)
    assert set(weekday.nlargest(2).index) == {0, 1}
    hour = orders.order_hour_of_day.value_counts(normalize=True).reindex(range(24), fill_value=0)
    assert hour[0:6].max() < 0.015
    assert hour[10:16].min() > 0.06


def test_reorder_rate_rises_with_order_number(calibration: Path) -> None:
    lines = _lines_with_orders([calibration])
    rate = lines.groupby("order_number").reordered.mean()
    assert 0.15 < rate[2] < 0.4
    assert rate[2] < rate[5] < rate[15]
    assert 0.6 < rate[15] < 0.85
    late = lines.loc[lines.order_number > 50, "reordered"].mean()
    assert late > 0.7


def test_history_predicts_the_train_basket_like_real_data(calibration: Path) -> None:
    """Frequency and recency must carry signal, but not so much that a threshold rule is near perfect."""
    orders = _read(calibration, "orders.csv")
    lines = _lines_with_orders([calibration])
    train_orders = orders[orders.eval_set == "train"].set_index("user_id")
    history = lines[lines.order_id.isin(orders.order_id[orders.eval_set == "prior"])]
    candidates = (
        history.groupby(["user_id", "product_id"])
        .agg(times=("order_number", "size"), last=("order_number", "max"))
        .reset_index()
    )
    candidates = candidates[candidates.user_id.isin(train_orders.index)]
    priors = train_orders.loc[candidates.user_id, "order_number"].to_numpy() - 1
    bought = lines[lines.order_id.isin(train_orders.order_id)][["user_id", "product_id"]].assign(label=1)
    candidates = candidates.merge(bought, on=["user_id", "product_id"], how="left").fillna({"label": 0})
    assert 0.05 < candidates.label.mean() < 0.2

    def auc(score: np.ndarray) -> float:
        ranks = pd.Series(score).rank().to_numpy()
        positive = candidates.label.to_numpy() == 1
        hits = positive.sum()
        return (ranks[positive].sum() - hits * (hits + 1) / 2) / (hits * (~positive).sum())

    assert 0.75 < auc(candidates.times.to_numpy() / priors) < 0.92
    assert 0.7 < auc(candidates["last"].to_numpy() - priors) < 0.9


def test_popularity_is_skewed_with_bananas_on_top(calibration: Path) -> None:
    prior = _read(calibration, "order_products__prior.csv")
    counts = prior.product_id.value_counts()
    assert set(counts.index[:3]) >= {24852, 13176}
    assert counts.iloc[:497].sum() / len(prior) > 0.25
    rebought_first = prior.loc[prior.add_to_cart_order == 1, "reordered"].mean()
    rebought_late = prior.loc[prior.add_to_cart_order >= 15, "reordered"].mean()
    assert rebought_first > rebought_late


def test_real_catalog_is_written_byte_for_byte(snapshot: Path) -> None:
    data = resources.files("instarec_assets.generate").joinpath("data")
    shipped = gzip.decompress(data.joinpath("products.csv.gz").read_bytes())
    assert (snapshot / "products.csv").read_bytes() == shipped
    assert (snapshot / "aisles.csv").read_bytes() == data.joinpath("aisles.csv").read_bytes()
    assert (snapshot / "departments.csv").read_bytes() == data.joinpath("departments.csv").read_bytes()
    assert len(_read(snapshot, "products.csv")) == 49_688
    assert len(_read(snapshot, "aisles.csv")) == 134
    assert len(_read(snapshot, "departments.csv")) == 21


def test_product_names_with_commas_survive_pandas_and_duckdb(snapshot: Path) -> None:
    assert '30,"Three Cheese Ziti, Marinara with Meatballs",38,1\n' in (snapshot / "products.csv").read_text()
    by_pandas = _read(snapshot, "products.csv").set_index("product_id")
    by_duckdb = duckdb.read_csv(str(snapshot / "products.csv")).df().set_index("product_id")
    assert by_pandas.loc[30, "product_name"] == "Three Cheese Ziti, Marinara with Meatballs"
    assert (by_pandas.product_name == by_duckdb.product_name).all()


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path: Path) -> None:
    runs = {
        name: generate_dataset(tmp_path / name, users=150, seed=seed, batches=2)
        for name, seed in (("a", 3), ("b", 3), ("c", 4))
    }
    for batch_a, batch_b, batch_c in zip(*(run.batches for run in runs.values()), strict=True):
        for name in FILES:
            assert (batch_a.folder / name).read_bytes() == (batch_b.folder / name).read_bytes()
        assert (batch_a.folder / "orders.csv").read_bytes() != (batch_c.folder / "orders.csv").read_bytes()


def test_summary_has_one_line_per_batch(increments) -> None:
    lines = increments.lines()
    assert len(lines) == 3
    assert [batch.partition for batch in increments.batches] == ["2025-01-06", "2025-01-13", "2025-01-20"]
    for line, batch in zip(lines, increments.batches, strict=True):
        assert line.startswith(batch.partition)
        assert f"orders={batch.orders:,}" in line
        assert batch.rows["orders.csv"] == len(_read(batch.folder, "orders.csv"))
        assert batch.rows["order_products__prior.csv"] == len(
            _read(batch.folder, "order_products__prior.csv")
        )


def test_increments_hold_only_new_orders_that_continue_histories(increments) -> None:
    folders = [batch.folder for batch in increments.batches]
    for index in (1, 2):
        earlier = pd.concat([_read(folder, "orders.csv") for folder in folders[:index]])
        new = _read(folders[index], "orders.csv").sort_values(["user_id", "order_number"])
        assert new.order_id.min() > earlier.order_id.max()
        returning = new[new.user_id.isin(earlier.user_id)]
        newcomers = new[~new.user_id.isin(earlier.user_id)]
        assert 0.15 < returning.user_id.nunique() / earlier.user_id.nunique() < 0.35
        assert returning.groupby("user_id").size().between(1, 3).all()
        start = returning.groupby("user_id").order_number.min()
        assert (start == earlier.groupby("user_id").order_number.max().loc[start.index] + 1).all()
        assert newcomers.user_id.nunique() >= 1
        assert newcomers.user_id.min() > earlier.user_id.max()
        assert newcomers.groupby("user_id").size().min() >= 4
        last = new.groupby("user_id").tail(1)
        assert set(last.eval_set) <= {"train", "test"}
        assert (new.drop(last.index).eval_set == "prior").all()


def test_previous_test_orders_deliver_their_lines_in_the_next_increment(increments) -> None:
    folders = [batch.folder for batch in increments.batches]
    delivered = 0
    for index in (1, 2):
        earlier = pd.concat([_read(folder, "orders.csv") for folder in folders[:index]])
        new = _read(folders[index], "orders.csv")
        prior = _read(folders[index], "order_products__prior.csv")
        previous_last = earlier.sort_values("order_number").groupby("user_id").tail(1)
        pending = previous_last[previous_last.user_id.isin(new.user_id) & (previous_last.eval_set == "test")]
        foreign = set(prior.order_id) - set(new.order_id)
        assert foreign == set(pending.order_id)
        delivered += len(foreign)
        landed = set(earlier.order_id) | set(new.order_id)
        for name in ("prior", "train"):
            assert set(_read(folders[index], f"order_products__{name}.csv").order_id) <= landed
        train = _read(folders[index], "order_products__train.csv")
        assert set(train.order_id) == set(new.order_id[new.eval_set == "train"])
    assert delivered > 0


def test_reordered_is_correct_across_all_batches(increments) -> None:
    lines = _lines_with_orders([batch.folder for batch in increments.batches])
    assert lines.user_id.notna().all()
    assert (lines.reordered.to_numpy() == _expected_reordered(lines)).all()


def test_increment_catalogs_rename_move_and_add_products(increments) -> None:
    first, second = increments.batches[0], increments.batches[1]
    before = _read(first.folder, "products.csv").set_index("product_id")
    after = _read(second.folder, "products.csv").set_index("product_id")
    changes = second.changes
    assert first.changes is None
    assert set(before.index) < set(after.index)
    for product_id in changes.renamed:
        assert after.loc[product_id, "product_name"] != before.loc[product_id, "product_name"]
        assert after.loc[product_id, "aisle_id"] == before.loc[product_id, "aisle_id"]
    aisle_department = before.groupby("aisle_id").department_id.first()
    for product_id in changes.moved:
        assert after.loc[product_id, "aisle_id"] != before.loc[product_id, "aisle_id"]
        assert after.loc[product_id, "department_id"] == aisle_department[after.loc[product_id, "aisle_id"]]
    assert min(changes.added) == before.index.max() + 1
    assert set(after.loc[list(changes.added), "aisle_id"]) <= set(aisle_department.index)
    unchanged = before.index.difference([*changes.renamed, *changes.moved])
    assert after.loc[unchanged].equals(before.loc[unchanged])
    assert len(_read(second.folder, "aisles.csv")) == 134
    assert _read(increments.batches[2].folder, "products.csv").product_id.max() > after.index.max()


def test_products_are_only_bought_once_launched(increments) -> None:
    for batch in increments.batches:
        known = set(_read(batch.folder, "products.csv").product_id)
        for name in ("prior", "train"):
            assert set(_read(batch.folder, f"order_products__{name}.csv").product_id) <= known


def test_custom_products_file_and_dates(tmp_path: Path) -> None:
    products = tmp_path / "few.csv"
    products.write_text(
        "product_id,product_name,aisle_id,department_id,extra\n"
        + "".join(f'{i},"Item {i}, large",{24 if i % 2 else 83},4,x\n' for i in range(1, 61))
    )
    summary = generate_dataset(
        tmp_path / "out",
        users=50,
        seed=1,
        batches=2,
        products_file=products,
        start_date=datetime.datetime(2024, 3, 1, 12, 30),
        batch_interval_days=1,
    )
    assert [batch.partition for batch in summary.batches] == ["2024-03-01", "2024-03-02"]
    lines = _read(summary.batches[0].folder, "order_products__prior.csv")
    assert set(lines.product_id) <= set(range(1, 61))
    written = _read(summary.batches[0].folder, "products.csv")
    assert list(written.columns) == list(HEADERS["products.csv"].split(","))
    assert written.loc[0, "product_name"] == "Item 1, large"


def test_rerun_into_the_same_folder_rewrites_it(tmp_path: Path) -> None:
    generate_dataset(tmp_path, users=20, seed=1)
    summary = generate_dataset(tmp_path, users=30, seed=1)
    folder = summary.batches[0].folder
    assert (folder / SUCCESS_MARKER).exists()
    assert _read(folder, "orders.csv").user_id.max() == 30


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"users": 0}, "users"),
        ({"users": 250_001}, "users"),
        ({"users": "100"}, "users"),
        ({"users": True}, "users"),
        ({"seed": -1}, "seed"),
        ({"batches": 0}, "batches"),
        ({"batch_interval_days": 0}, "batch_interval_days"),
        ({"start_date": "2025-01-06"}, "start_date"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(tmp_path: Path, arguments: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        generate_dataset(tmp_path, **{"users": 10, **arguments})
    assert not any(tmp_path.iterdir())


def test_bad_products_files_raise_value_error_naming_file_and_problem(tmp_path: Path) -> None:
    missing = tmp_path / "absent.csv"
    with pytest.raises(ValueError, match=r"absent\.csv"):
        generate_dataset(tmp_path / "out", users=10, products_file=missing)
    no_aisle = tmp_path / "no_aisle.csv"
    no_aisle.write_text("product_id,product_name,department_id\n1,Milk,16\n")
    with pytest.raises(ValueError, match=r"no_aisle\.csv.*aisle_id"):
        generate_dataset(tmp_path / "out", users=10, products_file=no_aisle)
    bad_aisle = tmp_path / "bad_aisle.csv"
    bad_aisle.write_text("product_id,product_name,aisle_id,department_id\n1,Milk,999,16\n")
    with pytest.raises(ValueError, match=r"bad_aisle\.csv.*aisle_id"):
        generate_dataset(tmp_path / "out", users=10, products_file=bad_aisle)
    bad_id = tmp_path / "bad_id.csv"
    bad_id.write_text("product_id,product_name,aisle_id,department_id\nfirst,Milk,84,16\n")
    with pytest.raises(ValueError, match=r"bad_id\.csv"):
        generate_dataset(tmp_path / "out", users=10, products_file=bad_id)


@pytest.mark.slow
def test_larger_run_matches_real_candidate_and_popularity_figures(tmp_path: Path) -> None:
    folder = generate_dataset(tmp_path, users=20_000, seed=2).batches[0].folder
    con = duckdb.connect()
    prior = f"read_csv('{folder}/order_products__prior.csv')"
    orders = f"read_csv('{folder}/orders.csv', types={{'order_hour_of_day': 'INTEGER'}})"
    distinct, reorder = con.execute(
        f"select avg(n), avg(r) from (select user_id, count(distinct product_id) n, avg(reordered) r "
        f"from {prior} join {orders} using (order_id) group by 1)"
    ).fetchone()
    assert 50 < distinct < 80
    rate = con.execute(f"select avg(reordered) from {prior}").fetchone()[0]
    assert 0.55 < rate < 0.63
    shares = con.execute(f"select count(*) from {prior} group by product_id order by 1 desc").fetchnumpy()
    counts = next(iter(shares.values()))
    assert 0.25 < counts[:497].sum() / counts.sum() < 0.4
    assert 0.3 < reorder < 0.7
