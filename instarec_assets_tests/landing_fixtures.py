"""Small hand-written landing batches in the exact Kaggle format, for tests that need known answers."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from instarec_assets.lake.schemas import LANDING_FILES

# The real Instacart catalog as the package ships it (products gzipped), so the tests need nothing
# outside the repository.
CATALOG_DATA = resources.files("instarec_assets.generate").joinpath("data")

ORDERS_HEADER = LANDING_FILES["orders"].columns
LINES_HEADER = LANDING_FILES["order_products_prior"].columns

# Two users: user 1 has three prior orders and a train order, user 2 two prior orders and a test order.
ORDERS: list[tuple] = [
    (101, 1, "prior", 1, 2, 8, ""),
    (102, 1, "prior", 2, 3, 9, "7.0"),
    (103, 1, "prior", 3, 3, 10, "7.0"),
    (104, 1, "train", 4, 4, 10, "8.0"),
    (201, 2, "prior", 1, 0, 14, ""),
    (202, 2, "prior", 2, 1, 15, "30.0"),
    (203, 2, "test", 3, 1, 16, "30.0"),
]
PRIOR_LINES: list[tuple] = [
    (101, 24852, 1, 0),
    (101, 13176, 2, 0),
    (102, 24852, 1, 1),
    (102, 1, 2, 0),
    (103, 24852, 1, 1),
    (103, 13176, 2, 1),
    (201, 2, 1, 0),
    (202, 2, 1, 1),
    (202, 3, 2, 0),
]
TRAIN_LINES: list[tuple] = [(104, 24852, 1, 1), (104, 4, 2, 0)]


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_catalog(folder: Path) -> None:
    """products.csv, aisles.csv and departments.csv, byte for byte the shipped Kaggle files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "products.csv").write_bytes(
        gzip.decompress(CATALOG_DATA.joinpath("products.csv.gz").read_bytes())
    )
    for name in ("aisles.csv", "departments.csv"):
        (folder / name).write_bytes(CATALOG_DATA.joinpath(name).read_bytes())


def write_small_products(path: Path, every: int = 10) -> Path:
    """Every `every`-th product of the shipped catalog (about 5,000 of 49,688), for generated
    datasets whose tests assert behaviour, not scale: the GraphSAGE, similar-items and catalog steps
    cost in proportion to the catalog, so a whole pipeline run is several times cheaper."""
    lines = gzip.decompress(CATALOG_DATA.joinpath("products.csv.gz").read_bytes()).decode().splitlines()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([lines[0], *lines[1::every]]) + "\n", encoding="utf-8")
    return path


def write_batch(
    folder: Path,
    orders: Sequence[tuple] = ORDERS,
    prior_lines: Sequence[tuple] = PRIOR_LINES,
    train_lines: Sequence[tuple] = TRAIN_LINES,
    success: bool = True,
) -> Path:
    """A complete landing folder: the real catalog plus the given orders and lines."""
    folder.mkdir(parents=True, exist_ok=True)
    write_catalog(folder)
    write_csv(folder / "orders.csv", ORDERS_HEADER, orders)
    write_csv(folder / "order_products__prior.csv", LINES_HEADER, prior_lines)
    write_csv(folder / "order_products__train.csv", LINES_HEADER, train_lines)
    if success:
        (folder / "_SUCCESS").touch()
    return folder
