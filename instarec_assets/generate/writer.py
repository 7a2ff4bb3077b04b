"""CSV writers that reproduce the Kaggle files' exact text conventions, fast enough for 34M lines.

The real orders.csv writes order_hour_of_day zero-padded ("08") and days_since_prior_order as a float
("15.0", empty on first orders); pyarrow would quote strings and print floats as "15", so those columns
are written as pre-formatted unquoted text and the headers are written by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from instarec_assets.lake.schemas import LANDING_FILES

from .catalog import Catalog, write_catalog_csv
from .orders import DAYS_CAP, EVAL_SET_NAMES

ORDERS_HEADER = LANDING_FILES["orders"].columns
LINES_HEADER = LANDING_FILES["order_products_prior"].columns
HOUR_TEXT = pa.array([f"{hour:02d}" for hour in range(24)])
DAYS_TEXT = pa.array([""] + [f"{day}.0" for day in range(DAYS_CAP + 1)])
EVAL_SET_TEXT = pa.array(EVAL_SET_NAMES)
WRITE_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16)


def _write_table(path: Path, header: tuple[str, ...], columns: dict[str, pa.Array | np.ndarray]) -> None:
    with path.open("wb") as handle:
        handle.write((",".join(header) + "\n").encode())
        pacsv.write_csv(pa.table(columns), handle, WRITE_OPTIONS)


def write_orders(
    path: Path,
    order_id: np.ndarray,
    user_id: np.ndarray,
    eval_set: np.ndarray,
    order_number: np.ndarray,
    day: np.ndarray,
    hour: np.ndarray,
    days_since: np.ndarray,
) -> None:
    """days_since of -1 marks a first order and is written empty."""
    columns = {
        "order_id": order_id,
        "user_id": user_id,
        "eval_set": EVAL_SET_TEXT.take(pa.array(eval_set.astype(np.int8))),
        "order_number": order_number,
        "order_dow": day,
        "order_hour_of_day": HOUR_TEXT.take(pa.array(hour.astype(np.int8))),
        "days_since_prior_order": DAYS_TEXT.take(
            pa.array((days_since.astype(np.int16) + 1).astype(np.int16))
        ),
    }
    _write_table(path, ORDERS_HEADER, columns)


def write_lines(
    path: Path, order_id: np.ndarray, product_id: np.ndarray, add_to_cart: np.ndarray, reordered: np.ndarray
) -> None:
    columns = {
        "order_id": order_id,
        "product_id": product_id,
        "add_to_cart_order": add_to_cart,
        "reordered": reordered,
    }
    _write_table(path, LINES_HEADER, columns)


def write_catalog(folder: Path, catalog: Catalog) -> None:
    """The full current catalog, as a retailer's daily extract would be."""
    write_catalog_csv(
        folder / "products.csv",
        ("product_id", "product_name", "aisle_id", "department_id"),
        catalog.product_rows(),
    )
    write_catalog_csv(folder / "aisles.csv", ("aisle_id", "aisle"), list(catalog.aisles))
    write_catalog_csv(folder / "departments.csv", ("department_id", "department"), list(catalog.departments))
