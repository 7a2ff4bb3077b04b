"""Bad landing input, through the Dagster-free lake functions: every problem is either one clear
LandingFileError naming the file and column, or a quarantine row with a reason, and no row is lost.

Each test writes a tiny landing file under tmp_path, lands it with a real DuckDB connection and the
local fsspec filesystem, and cleans the staged raw parquet exactly as the clean assets do.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import fsspec
import pytest

from instarec_assets.lake.accounting import CleanResult
from instarec_assets.lake.clean_catalog import AISLES, DEPARTMENTS, clean_dimension, clean_products
from instarec_assets.lake.clean_order_products import clean_order_products
from instarec_assets.lake.clean_orders import clean_orders
from instarec_assets.lake.landing import LandingFileError, RawIngest, ingest_landing_file
from instarec_assets.lake.schemas import LANDING_FILES

DAY_1 = "2025-01-06"
DAY_2 = "2025-01-07"
NOW = dt.datetime(2025, 1, 6, 12, 0, tzinfo=dt.UTC)
FS = fsspec.filesystem("file")

ORDERS_HEADER = "order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order\n"
LINES_HEADER = "order_id,product_id,add_to_cart_order,reordered\n"
PRODUCTS_HEADER = "product_id,product_name,aisle_id,department_id\n"
AISLES_CSV = "aisle_id,aisle\n1,fresh fruits\n2,coffee\n"
DEPARTMENTS_CSV = "department_id,department\n1,produce\n2,beverages\n"
PRODUCTS_CSV = PRODUCTS_HEADER + "10,Banana,1,1\n20,Ground Coffee,2,2\n30,Apple,1,1\n"

# User 1: a first prior order, a second prior order, then a train order.
GOOD_ORDERS = "101,1,prior,1,2,8,\n102,1,prior,2,3,9,7.0\n103,1,train,3,4,10,8.0\n"


@pytest.fixture
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect() as connection:
        yield connection


def write_landing(
    tmp_path: Path, file_name: str, content: str | bytes, partition: str = DAY_1
) -> tuple[Path, Path]:
    """Write one landed file; returns (landing folder, scratch folder) for that partition."""
    folder = tmp_path / "landing" / partition
    folder.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    (folder / file_name).write_bytes(data)
    return folder, tmp_path / "scratch" / partition


def land(
    conn: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    table: str,
    content: str | bytes,
    file_name: str | None = None,
    partition: str = DAY_1,
) -> RawIngest:
    spec = LANDING_FILES[table]
    folder, scratch = write_landing(tmp_path, file_name or f"{spec.file_stem}.csv", content, partition)
    return ingest_landing_file(conn, FS, str(folder), spec, scratch, NOW)


def landing_error(
    conn: duckdb.DuckDBPyConnection, tmp_path: Path, table: str, content: str | bytes, file_name: str
) -> str:
    with pytest.raises(LandingFileError) as raised:
        land(conn, tmp_path, table, content, file_name)
    return str(raised.value)


def raw_rows(conn: duckdb.DuckDBPyConnection, ingest: RawIngest, columns: str) -> list[tuple]:
    return conn.execute(
        f"SELECT {columns} FROM read_parquet(?, hive_partitioning = false) ORDER BY _source_row",
        [str(ingest.staged.path)],
    ).fetchall()


def quarantined(conn: duckdb.DuckDBPyConnection, result: CleanResult) -> list[tuple[int, str, dict | str]]:
    """(source_row, reason, record) of each quarantined row; JSON records are decoded."""
    rows = conn.execute(
        "SELECT source_row, reason, record FROM read_parquet(?, hive_partitioning = false)"
        " ORDER BY source_file, source_row",
        [str(result.quarantine.path)],
    ).fetchall()
    return [(row, reason, _decoded(record)) for row, reason, record in rows]


def _decoded(record: str) -> dict | str:
    try:
        return json.loads(record)
    except json.JSONDecodeError:
        return record


def clean_rows(conn: duckdb.DuckDBPyConnection, result: CleanResult, columns: str) -> list[tuple]:
    return conn.execute(
        f"SELECT {columns} FROM read_parquet(?, hive_partitioning = false) ORDER BY ALL",
        [str(result.clean.path)],
    ).fetchall()


def assert_accounting(result: CleanResult, raw: int, clean: int, quarantined: int, duplicates: int) -> None:
    accounting = result.accounting
    assert (
        accounting.raw_rows,
        accounting.clean_rows,
        accounting.quarantined_rows,
        accounting.duplicate_rows,
    ) == (raw, clean, quarantined, duplicates)
    assert accounting.balanced


def orders_cleaned(
    conn: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    body: str,
    partition: str = DAY_1,
    earlier: Sequence[str] = (),
) -> CleanResult:
    raw = land(conn, tmp_path, "orders", ORDERS_HEADER + body, partition=partition)
    return clean_orders(conn, str(raw.staged.path), list(earlier), tmp_path / "clean_orders" / partition)


def catalog_cleaned(
    conn: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    products_csv: str | bytes = PRODUCTS_CSV,
    aisles_csv: str | bytes = AISLES_CSV,
    partition: str = DAY_1,
) -> tuple[CleanResult, CleanResult, CleanResult]:
    """Aisles, departments and products for one partition, as the clean catalog assets build them."""
    day = dt.date.fromisoformat(partition)
    scratch = tmp_path / "clean_catalog" / partition
    aisles = clean_dimension(
        conn, AISLES, str(land(conn, tmp_path, "aisles", aisles_csv).staged.path), None, day, scratch
    )
    departments = clean_dimension(
        conn,
        DEPARTMENTS,
        str(land(conn, tmp_path, "departments", DEPARTMENTS_CSV).staged.path),
        None,
        day,
        scratch,
    )
    products = clean_products(
        conn,
        str(land(conn, tmp_path, "products", products_csv).staged.path),
        None,
        str(aisles.clean.path),
        str(departments.clean.path),
        day,
        scratch,
    )
    return aisles, departments, products


def lines_cleaned(
    conn: duckdb.DuckDBPyConnection, tmp_path: Path, prior_body: str, train_body: str = ""
) -> CleanResult:
    """Order lines against GOOD_ORDERS and the small catalog."""
    orders = orders_cleaned(conn, tmp_path, GOOD_ORDERS)
    _, _, products = catalog_cleaned(conn, tmp_path)
    prior = land(conn, tmp_path, "order_products_prior", LINES_HEADER + prior_body)
    train = land(conn, tmp_path, "order_products_train", LINES_HEADER + train_body)
    return clean_order_products(
        conn,
        str(prior.staged.path),
        str(train.staged.path),
        [str(orders.clean.path)],
        str(products.clean.path),
        [],
        tmp_path / "clean_lines",
    )


# --- files that cannot be landed at all: one LandingFileError naming the file and the problem ---


def test_missing_file_error_names_the_file_and_the_gzip_alternative(conn, tmp_path: Path):
    folder, scratch = write_landing(tmp_path, "products.csv", PRODUCTS_CSV)
    with pytest.raises(LandingFileError) as raised:
        ingest_landing_file(conn, FS, str(folder), LANDING_FILES["orders"], scratch, NOW)
    assert str(raised.value) == f"{folder}/orders.csv: file is missing (also looked for .csv.gz)"


def test_missing_column_error_names_file_column_and_expected_header(conn, tmp_path: Path):
    header = ORDERS_HEADER.replace(",days_since_prior_order", "")
    message = landing_error(conn, tmp_path, "orders", header + "101,1,prior,1,2,8\n", "orders.csv")
    assert message == (
        "orders.csv: missing column(s) days_since_prior_order (expected: "
        "order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order)"
    )


def test_renamed_column_error_names_both_the_missing_and_the_unexpected_name(conn, tmp_path: Path):
    header = "order_id,product,add_to_cart_order,reordered\n"
    message = landing_error(conn, tmp_path, "order_products_prior", header, "order_products__prior.csv")
    assert message.startswith(
        "order_products__prior.csv: missing column(s) product_id; unexpected column(s) product (expected: "
    )


def test_extra_columns_are_refused_by_name_and_an_unnamed_one_is_called_unnamed(conn, tmp_path: Path):
    extra = landing_error(conn, tmp_path, "aisles", "aisle_id,aisle,colour\n1,x,red\n", "aisles.csv")
    assert extra == "aisles.csv: unexpected column(s) colour (expected: aisle_id,aisle)"
    trailing_comma = landing_error(conn, tmp_path, "aisles", "aisle_id,aisle,\n1,x,\n", "aisles.csv")
    assert trailing_comma == "aisles.csv: unexpected column(s) (unnamed) (expected: aisle_id,aisle)"


def test_repeated_column_is_refused_by_name(conn, tmp_path: Path):
    message = landing_error(conn, tmp_path, "aisles", "aisle_id,aisle,aisle\n", "aisles.csv")
    assert message == "aisles.csv: repeated column(s) aisle (expected: aisle_id,aisle)"


def test_columns_in_another_order_land_under_their_own_names(conn, tmp_path: Path):
    raw = land(conn, tmp_path, "aisles", "aisle,aisle_id\nfresh fruits,1\n")
    assert raw_rows(conn, raw, "aisle_id, aisle") == [("1", "fresh fruits")]


@pytest.mark.parametrize(
    ("file_name", "content"),
    [
        ("orders.csv", b""),
        ("orders.csv", b"\n\n"),
        ("orders.csv.gz", b""),
        ("orders.csv.gz", gzip.compress(b"", mtime=0)),
    ],
    ids=["zero-bytes", "blank-lines", "zero-byte-gz", "empty-gz"],
)
def test_empty_file_is_refused_as_empty(conn, tmp_path: Path, file_name: str, content: bytes):
    message = landing_error(conn, tmp_path, "orders", content, file_name)
    assert message == f"{file_name}: file is empty (expected a header line)"


def test_header_only_file_lands_no_rows_and_cleans_to_nothing(conn, tmp_path: Path):
    result = orders_cleaned(conn, tmp_path, "")
    assert_accounting(result, raw=0, clean=0, quarantined=0, duplicates=0)
    assert result.clean.row_count == 0 and result.quarantine.row_count == 0


def test_both_csv_and_gzip_present_is_refused(conn, tmp_path: Path):
    write_landing(tmp_path, "orders.csv", ORDERS_HEADER + GOOD_ORDERS)
    message = landing_error(conn, tmp_path, "orders", gzip.compress(ORDERS_HEADER.encode()), "orders.csv.gz")
    assert message == f"{tmp_path}/landing/{DAY_1}: both orders.csv and orders.csv.gz are present; keep one"


def test_corrupt_gzip_is_refused_naming_the_file(conn, tmp_path: Path):
    message = landing_error(conn, tmp_path, "orders", b"orders, but not gzipped", "orders.csv.gz")
    assert message.startswith(
        "orders.csv.gz: cannot be read as gzip (corrupt or truncated): Not a gzipped file"
    )


def test_gzip_truncated_after_its_header_is_refused_not_half_landed(conn, tmp_path: Path):
    rng = random.Random(0)
    body = "".join(
        f"{order},{rng.randint(1, 9999)},prior,{order},{rng.randint(0, 6)},{rng.randint(0, 23)},7.0\n"
        for order in range(1, 20_000)
    )
    compressed = gzip.compress((ORDERS_HEADER + body).encode())
    message = landing_error(conn, tmp_path, "orders", compressed[: len(compressed) // 2], "orders.csv.gz")
    assert message.startswith("orders.csv.gz: cannot be read as gzip (corrupt or truncated): ")
    assert "\n" not in message


def test_gzip_file_truncated_inside_its_header_is_refused(conn, tmp_path: Path):
    compressed = gzip.compress((ORDERS_HEADER + GOOD_ORDERS).encode())
    message = landing_error(conn, tmp_path, "orders", compressed[:20], "orders.csv.gz")
    assert message.startswith("orders.csv.gz: cannot be read as gzip (corrupt or truncated): ")


def test_gzip_bytes_under_a_csv_name_are_refused_as_not_utf8(conn, tmp_path: Path):
    compressed = gzip.compress((ORDERS_HEADER + GOOD_ORDERS).encode())
    message = landing_error(conn, tmp_path, "orders", compressed, "orders.csv")
    assert message == "orders.csv: header line is not valid UTF-8"


# --- encodings and CSV dialect details ---


def test_gzip_file_lands_the_same_rows_with_its_own_name_as_source(conn, tmp_path: Path):
    raw = land(
        conn, tmp_path, "orders", gzip.compress((ORDERS_HEADER + GOOD_ORDERS).encode()), "orders.csv.gz"
    )
    assert raw.source_file == f"{tmp_path}/landing/{DAY_1}/orders.csv.gz"
    assert raw_rows(conn, raw, "order_id, days_since_prior_order, _source_row") == [
        ("101", None, 1),
        ("102", "7.0", 2),
        ("103", "8.0", 3),
    ]


def test_utf8_bom_is_not_part_of_the_first_column(conn, tmp_path: Path):
    result_raw = land(conn, tmp_path, "orders", ("\ufeff" + ORDERS_HEADER + GOOD_ORDERS).encode())
    assert [row[0] for row in raw_rows(conn, result_raw, "order_id")] == ["101", "102", "103"]
    result = clean_orders(conn, str(result_raw.staged.path), [], tmp_path / "clean")
    assert_accounting(result, raw=3, clean=3, quarantined=0, duplicates=0)


def test_crlf_line_ends_leave_no_carriage_return_in_the_last_column(conn, tmp_path: Path):
    raw = land(conn, tmp_path, "orders", (ORDERS_HEADER + GOOD_ORDERS).replace("\n", "\r\n"))
    assert [row[0] for row in raw_rows(conn, raw, "days_since_prior_order")] == [None, "7.0", "8.0"]
    result = clean_orders(conn, str(raw.staged.path), [], tmp_path / "clean")
    assert_accounting(result, raw=3, clean=3, quarantined=0, duplicates=0)
    assert clean_rows(conn, result, "order_id, days_since_prior_order") == [(101, None), (102, 7), (103, 8)]


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_quoted_commas_and_doubled_quotes_in_product_names_survive_to_clean(
    conn, tmp_path: Path, line_end: str
):
    products = PRODUCTS_HEADER + '10,"Peanut Butter, Creamy ""Natural""",1,1\n20,"Plain, Coffee",2,2\n'
    _, _, result = catalog_cleaned(conn, tmp_path, products_csv=products.replace("\n", line_end))
    assert_accounting(result, raw=2, clean=2, quarantined=0, duplicates=0)
    assert clean_rows(conn, result, "product_id, product_name") == [
        (10, 'Peanut Butter, Creamy "Natural"'),
        (20, "Plain, Coffee"),
    ]


def test_mixed_line_ends_are_refused_with_one_line_naming_the_file(conn, tmp_path: Path):
    content = ORDERS_HEADER + GOOD_ORDERS.replace("\n", "\r\n")
    message = landing_error(conn, tmp_path, "orders", content, "orders.csv")
    assert message == (
        "orders.csv: cannot be parsed as CSV: Invalid Input Error: "
        "The CSV Parser state machine reached an invalid state."
    )


def test_non_utf8_line_is_quarantined_with_the_encoding_error(conn, tmp_path: Path):
    content = (ORDERS_HEADER + "101,1,prior,1,2,8,\n").encode() + "102,1,pri\xe9r,2,3,9,7\n".encode("latin-1")
    raw = land(conn, tmp_path, "orders", content)
    result = clean_orders(conn, str(raw.staged.path), [], tmp_path / "clean")
    assert_accounting(result, raw=2, clean=1, quarantined=1, duplicates=0)
    [(row, reason, _)] = quarantined(conn, result)
    assert row == 2
    assert reason.startswith("unparseable line: line 3: INVALID ENCODING: ")


# --- lines the CSV reader cannot split: one raw row each, quarantined with the parser's message ---


def test_truncated_last_line_is_one_quarantined_row_with_the_line_as_landed(conn, tmp_path: Path):
    raw = land(conn, tmp_path, "orders", ORDERS_HEADER + GOOD_ORDERS + "104,1,pri")
    assert raw.staged.row_count == 4 and raw.rejected_lines == 1
    result = clean_orders(conn, str(raw.staged.path), [], tmp_path / "clean")
    assert_accounting(result, raw=4, clean=3, quarantined=1, duplicates=0)
    assert quarantined(conn, result) == [
        (
            4,
            "unparseable line: line 5: MISSING COLUMNS: Expected Number of Columns: 7 Found: 3",
            "104,1,pri",
        )
    ]


def test_bad_lines_mid_file_keep_every_row_at_its_own_row_number(conn, tmp_path: Path):
    body = "101,1\n102,1,prior,1,2,8,\n103,1,prior,2,3,9,7,99\n104,1,prior,3,3,9,seven\n"
    raw = land(conn, tmp_path, "orders", ORDERS_HEADER + body)
    assert raw_rows(conn, raw, "_source_row, order_id, _raw_line") == [
        (1, None, "101,1"),
        (2, "102", None),
        (3, None, "103,1,prior,2,3,9,7,99"),
        (4, "104", None),
    ]
    result = clean_orders(conn, str(raw.staged.path), [], tmp_path / "clean")
    assert_accounting(result, raw=4, clean=1, quarantined=3, duplicates=0)
    assert [(row, reason) for row, reason, _ in quarantined(conn, result)] == [
        (1, "unparseable line: line 2: MISSING COLUMNS: Expected Number of Columns: 7 Found: 2"),
        (3, "unparseable line: line 4: TOO MANY COLUMNS: Expected Number of Columns: 7 Found: 8"),
        (4, "days_since_prior_order: not a number: 'seven'"),
    ]


def test_unterminated_quote_is_quarantined_not_swallowing_the_rest(conn, tmp_path: Path):
    body = '101,1,prior,1,2,8,\n102,1,"prior,2,3,9,7\n'
    result = orders_cleaned(conn, tmp_path, body)
    assert_accounting(result, raw=2, clean=1, quarantined=1, duplicates=0)
    [(row, reason, record)] = quarantined(conn, result)
    assert (row, record) == (2, '102,1,"prior,2,3,9,7')
    assert reason.startswith("unparseable line: line 3: UNQUOTED VALUE")


# --- values: each bad one is quarantined with the column, the rule and the value as landed ---


@pytest.mark.parametrize(
    ("order_id", "reason"),
    [
        ("abc", "order_id: not a number: 'abc'"),
        ("\u0663", "order_id: not a number: '\u0663'"),  # ARABIC-INDIC DIGIT THREE
        ("\uff17", "order_id: not a number: '\uff17'"),  # FULLWIDTH DIGIT SEVEN
        ("1e3", "order_id: not a number: '1e3'"),
        ("1_000", "order_id: not a number: '1_000'"),
        ("0x10", "order_id: not a number: '0x10'"),
        ("nan", "order_id: not a number: 'nan'"),
        ("inf", "order_id: not a number: 'inf'"),
        ("10.5", "order_id: not a whole number: '10.5'"),
        ("0", "order_id: out of range 1..2147483647: '0'"),
        ("2147483648", "order_id: out of range 1..2147483647: '2147483648'"),
        ("9" * 60, f"order_id: out of range 1..2147483647: '{'9' * 40}'"),
        ("", "order_id: missing"),
    ],
)
def test_bad_order_id_is_quarantined_with_column_rule_and_value(conn, tmp_path: Path, order_id: str, reason):
    result = orders_cleaned(conn, tmp_path, f"{order_id},1,prior,1,2,8,\n102,1,prior,2,3,9,7.0\n")
    assert_accounting(result, raw=2, clean=1, quarantined=1, duplicates=0)
    assert quarantined(conn, result) == [
        (
            1,
            reason,
            {
                "order_id": order_id or None,
                "user_id": "1",
                "eval_set": "prior",
                "order_number": "1",
                "order_dow": "2",
                "order_hour_of_day": "8",
                "days_since_prior_order": None,
            },
        )
    ]


def test_kaggle_spellings_of_whole_numbers_are_accepted(conn, tmp_path: Path):
    result = orders_cleaned(conn, tmp_path, " 101 ,+1,PRIOR,1.0,2,8,\n102,1,prior,2,3.,9,30.00\n")
    assert_accounting(result, raw=2, clean=2, quarantined=0, duplicates=0)
    assert clean_rows(conn, result, "order_id, user_id, eval_set, order_dow, days_since_prior_order") == [
        (101, 1, "prior", 2, None),
        (102, 1, "prior", 3, 30),
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("101,1,prior,1,7,8,", "order_dow: out of range 0..6: '7'"),
        ("101,1,prior,1,-1,8,", "order_dow: out of range 0..6: '-1'"),
        ("101,1,prior,1,2,24,", "order_hour_of_day: out of range 0..23: '24'"),
        ("101,1,prior,2,2,8,31", "days_since_prior_order: out of range 0..30: '31'"),
        ("101,1,prior,2,2,8,-1.0", "days_since_prior_order: out of range 0..30: '-1.0'"),
        ("101,1,prior,2,2,8,2.5", "days_since_prior_order: not a whole number: '2.5'"),
        ("101,1,prior,0,2,8,", "order_number: out of range 1..10000: '0'"),
        ("101,1,later,1,2,8,", "eval_set: not one of prior/train/test: 'later'"),
    ],
)
def test_out_of_range_order_values_are_quarantined(conn, tmp_path: Path, row: str, reason: str):
    result = orders_cleaned(conn, tmp_path, row + "\n")
    assert_accounting(result, raw=1, clean=0, quarantined=1, duplicates=0)
    assert [(source_row, why) for source_row, why, _ in quarantined(conn, result)] == [(1, reason)]


def test_gap_on_a_first_order_and_no_gap_on_a_later_order_are_quarantined(conn, tmp_path: Path):
    result = orders_cleaned(conn, tmp_path, "101,1,prior,1,2,8,5\n102,1,prior,2,3,9,\n103,1,prior,3,3,9, \n")
    assert_accounting(result, raw=3, clean=0, quarantined=3, duplicates=0)
    assert [(row, reason) for row, reason, _ in quarantined(conn, result)] == [
        (1, "days_since_prior_order: must be empty on a first order (order_number 1)"),
        (2, "days_since_prior_order: missing on order_number 2"),
        (3, "days_since_prior_order: missing on order_number 3"),
    ]


# --- duplicates within a file and across partitions ---


def test_exact_duplicates_count_as_duplicates_and_changed_copies_are_quarantined(conn, tmp_path: Path):
    body = GOOD_ORDERS + "101,1,prior,1,2,8,\n102,1,prior,2,3,9,7\n103,1,train,3,4,11,8.0\n"
    result = orders_cleaned(conn, tmp_path, body)
    # `7` and `7.0` are the same value, so row 5 is an exact duplicate of row 2.
    assert_accounting(result, raw=6, clean=3, quarantined=1, duplicates=2)
    assert result.outcome_counts == {"clean": 3, "duplicate": 2, "quarantined": 1}
    [(row, reason, record)] = quarantined(conn, result)
    assert (row, reason) == (6, "order_id appears more than once in this partition with different values")
    assert record["order_id"] == 103 and record["order_hour_of_day"] == 11
    assert clean_rows(conn, result, "order_id, order_hour_of_day") == [(101, 8), (102, 9), (103, 10)]


def test_order_resent_in_a_later_partition_is_a_duplicate_and_is_not_stored_again(conn, tmp_path: Path):
    first = orders_cleaned(conn, tmp_path, GOOD_ORDERS, partition=DAY_1)
    body = "102,1,prior,2,3,9,7.0\n103,1,train,3,5,10,8.0\n201,2,prior,1,0,14,\n"
    second = orders_cleaned(conn, tmp_path, body, partition=DAY_2, earlier=[str(first.clean.path)])
    assert_accounting(second, raw=3, clean=1, quarantined=1, duplicates=1)
    assert clean_rows(conn, second, "order_id") == [(201,)]
    assert [(row, reason) for row, reason, _ in quarantined(conn, second)] == [
        (2, "order_id already stored in an earlier partition with different values")
    ]


def test_duplicate_order_lines_count_once_and_conflicting_ones_are_quarantined(conn, tmp_path: Path):
    result = lines_cleaned(conn, tmp_path, "101,10,1,0\n101,10,1,0\n101,20,2,0\n101,20,2,1\n")
    assert_accounting(result, raw=4, clean=2, quarantined=1, duplicates=1)
    assert [(row, reason) for row, reason, _ in quarantined(conn, result)] == [
        (4, "order_id/product_id appears more than once in this partition with different values")
    ]


# --- cross-table checks ---


def test_lines_for_unknown_orders_and_products_are_quarantined(conn, tmp_path: Path):
    prior = "101,10,1,0\n999,10,1,0\n101,77777,2,0\n101,\u0663,3,0\n"
    result = lines_cleaned(conn, tmp_path, prior, train_body="103,10,1,1\n102,20,1,0\n")
    assert_accounting(result, raw=6, clean=2, quarantined=4, duplicates=0)
    assert [(row, reason) for row, reason, _ in quarantined(conn, result)] == [
        (2, "order_id 999: unknown order (not in orders up to this partition)"),
        (3, "product_id 77777: unknown product"),
        (4, "product_id: not a number: '\u0663'"),
        (2, "order_products__train line for prior order 102"),
    ]
    assert clean_rows(conn, result, "order_id, product_id, eval_set") == [
        (101, 10, "prior"),
        (103, 10, "train"),
    ]


def test_product_with_an_unknown_aisle_or_department_is_quarantined(conn, tmp_path: Path):
    products = PRODUCTS_HEADER + "10,Banana,1,1\n20,Mystery,99,1\n30,Ghost,1,42\n"
    _, _, result = catalog_cleaned(conn, tmp_path, products_csv=products)
    assert_accounting(result, raw=3, clean=1, quarantined=2, duplicates=0)
    assert quarantined(conn, result) == [
        (
            2,
            "aisle_id 99: unknown aisle",
            {"product_id": 20, "product_name": "Mystery", "aisle_id": 99, "department_id": 1},
        ),
        (
            3,
            "department_id 42: unknown department",
            {"product_id": 30, "product_name": "Ghost", "aisle_id": 1, "department_id": 42},
        ),
    ]


# --- text normalisation ---


def test_names_are_nfc_normalised_with_whitespace_collapsed_and_trimmed(conn, tmp_path: Path):
    products = (
        PRODUCTS_HEADER
        + "10,Cafe\u0301  Latte,1,1\n"
        + "20,\tOrganic\u00a0\u00a0Ground\t Coffee ,2,2\n"
        + "30,\u00a0 ,1,1\n"
    )
    aisles = "aisle_id,aisle\n1, fresh  fruits \n2,cafe\u0301\n"
    aisle_result, _, product_result = catalog_cleaned(
        conn, tmp_path, products_csv=products, aisles_csv=aisles
    )
    assert clean_rows(conn, aisle_result, "aisle_id, aisle") == [(1, "fresh fruits"), (2, "caf\u00e9")]
    assert clean_rows(conn, product_result, "product_id, product_name") == [
        (10, "Caf\u00e9 Latte"),
        (20, "Organic Ground Coffee"),
    ]
    assert_accounting(product_result, raw=3, clean=2, quarantined=1, duplicates=0)
    assert [(row, reason) for row, reason, _ in quarantined(conn, product_result)] == [
        (3, "product_name: missing")
    ]


def test_nfd_and_nfc_spellings_of_one_product_are_exact_duplicates(conn, tmp_path: Path):
    products = PRODUCTS_HEADER + "10,Caf\u00e9 Latte,1,1\n10,Cafe\u0301 Latte,1,1\n10,Cafe Latte,1,1\n"
    _, _, result = catalog_cleaned(conn, tmp_path, products_csv=products)
    assert_accounting(result, raw=3, clean=1, quarantined=1, duplicates=1)
    assert [(row, reason) for row, reason, _ in quarantined(conn, result)] == [
        (3, "product_id appears more than once in this partition with different values")
    ]


# --- control characters: the CSV reader keeps them (NUL included), so the clean step refuses them ---


def test_control_characters_reach_raw_as_landed(conn, tmp_path: Path):
    content = PRODUCTS_HEADER.encode() + b'10,Bana\x00na,1,1\n20,"Ap\x01ple",2,2\n30,Esc\x1b[31m,1,1\n'
    raw = land(conn, tmp_path, "products", content)
    assert raw.rejected_lines == 0
    assert raw_rows(conn, raw, "_source_row, product_name") == [
        (1, "Bana\x00na"),
        (2, "Ap\x01ple"),
        (3, "Esc\x1b[31m"),
    ]


def test_control_characters_in_product_names_are_quarantined_with_position_and_escaped_value(
    conn, tmp_path: Path
):
    content = PRODUCTS_HEADER.encode() + (
        b"10,Bana\x00na,1,1\n"
        b'20,"Ap\x01ple",2,2\n'
        b"30,Esc\x1b[31m,1,1\n"
        b"40,Del\x7f,1,1\n"
        b"50,\x00,1,1\n"
        b"60,Tab\there,1,1\n"
        b'70,"Two\r\nlines",2,2\n' + "80,Caf\u00e9 \u4e2d\u6587,2,2\n".encode()
    )
    _, _, result = catalog_cleaned(conn, tmp_path, products_csv=content)
    assert_accounting(result, raw=8, clean=3, quarantined=5, duplicates=0)
    assert quarantined(conn, result) == [
        (
            1,
            r"product_name: contains a control character (\x00 at position 5): 'Bana\x00na'",
            {"product_id": "10", "product_name": "Bana\x00na", "aisle_id": "1", "department_id": "1"},
        ),
        (
            2,
            r"product_name: contains a control character (\x01 at position 3): 'Ap\x01ple'",
            {"product_id": "20", "product_name": "Ap\x01ple", "aisle_id": "2", "department_id": "2"},
        ),
        (
            3,
            r"product_name: contains a control character (\x1b at position 4): 'Esc\x1b[31m'",
            {"product_id": "30", "product_name": "Esc\x1b[31m", "aisle_id": "1", "department_id": "1"},
        ),
        (
            4,
            r"product_name: contains a control character (\x7f at position 4): 'Del\x7f'",
            {"product_id": "40", "product_name": "Del\x7f", "aisle_id": "1", "department_id": "1"},
        ),
        (
            5,
            r"product_name: contains a control character (\x00 at position 1): '\x00'",
            {"product_id": "50", "product_name": "\x00", "aisle_id": "1", "department_id": "1"},
        ),
    ]
    # Tab and line breaks are whitespace (one space); accented and CJK letters are text.
    assert clean_rows(conn, result, "product_id, product_name") == [
        (60, "Tab here"),
        (70, "Two lines"),
        (80, "Caf\u00e9 \u4e2d\u6587"),
    ]


def test_control_characters_in_aisle_department_and_eval_set_are_quarantined(conn, tmp_path: Path):
    aisles = b"aisle_id,aisle\n1,fresh\x1bfruits\n2,coffee\n"
    aisle_result, _, _ = catalog_cleaned(conn, tmp_path, aisles_csv=aisles)
    assert_accounting(aisle_result, raw=2, clean=1, quarantined=1, duplicates=0)
    assert [(row, reason) for row, reason, _ in quarantined(conn, aisle_result)] == [
        (1, r"aisle: contains a control character (\x1b at position 6): 'fresh\x1bfruits'")
    ]
    departments = land(conn, tmp_path, "departments", b"department_id,department\n1,pro\x02duce\n")
    department_result = clean_dimension(
        conn, DEPARTMENTS, str(departments.staged.path), None, dt.date(2025, 1, 6), tmp_path / "departments"
    )
    assert_accounting(department_result, raw=1, clean=0, quarantined=1, duplicates=0)
    assert [reason for _, reason, _ in quarantined(conn, department_result)] == [
        r"department: contains a control character (\x02 at position 4): 'pro\x02duce'"
    ]
    orders = orders_cleaned(conn, tmp_path, "101,1,prior\x00,1,2,8,\n102,1\x0b,prior,2,3,9,7.0\n")
    assert_accounting(orders, raw=2, clean=0, quarantined=2, duplicates=0)
    assert [(row, reason) for row, reason, _ in quarantined(conn, orders)] == [
        (1, r"eval_set: contains a control character (\x00 at position 6): 'prior\x00'"),
        (2, r"user_id: not a number: '1\x0b'"),
    ]


def test_a_quarantined_catalog_row_leaves_the_stored_current_row_open(conn, tmp_path: Path):
    """Day 2 resends product 10 and aisle 1 with a control character: both stay as stored on day 1."""
    _, _, day_1_products = catalog_cleaned(conn, tmp_path)
    day_1_aisles = tmp_path / "clean_catalog" / DAY_1 / "clean_aisles.parquet"
    day_2 = dt.date.fromisoformat(DAY_2)
    scratch = tmp_path / "clean_catalog" / DAY_2
    aisles_raw = land(conn, tmp_path, "aisles", b"aisle_id,aisle\n1,fresh\x00fruits\n", partition=DAY_2)
    aisles = clean_dimension(conn, AISLES, str(aisles_raw.staged.path), str(day_1_aisles), day_2, scratch)
    assert_accounting(aisles, raw=1, clean=0, quarantined=1, duplicates=0)
    assert clean_rows(conn, aisles, "aisle_id, aisle, updated_on") == [
        (1, "fresh fruits", dt.date(2025, 1, 6)),
        (2, "coffee", dt.date(2025, 1, 6)),
    ]
    products_raw = land(
        conn,
        tmp_path,
        "products",
        PRODUCTS_HEADER.encode() + b"10,Bana\x00na,1,1\n20,Coffee,2,2\n",
        partition=DAY_2,
    )
    products = clean_products(
        conn,
        str(products_raw.staged.path),
        str(day_1_products.clean.path),
        str(aisles.clean.path),
        str(tmp_path / "clean_catalog" / DAY_1 / "clean_departments.parquet"),
        day_2,
        scratch,
    )
    assert_accounting(products, raw=2, clean=1, quarantined=1, duplicates=0)
    assert [(row, reason) for row, reason, _ in quarantined(conn, products)] == [
        (1, r"product_name: contains a control character (\x00 at position 5): 'Bana\x00na'")
    ]
    assert clean_rows(conn, products, "product_id, product_name, valid_from, valid_to, is_current") == [
        (10, "Banana", dt.date(2025, 1, 6), None, True),
        (20, "Coffee", dt.date(2025, 1, 7), None, True),
        (20, "Ground Coffee", dt.date(2025, 1, 6), dt.date(2025, 1, 7), False),
        (30, "Apple", dt.date(2025, 1, 6), None, True),
    ]
