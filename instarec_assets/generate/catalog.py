"""The product catalog: loading the shipped Instacart files (or a user's products file) and evolving it.

Every batch lands the full current catalog, so the catalog is an immutable value and each increment
produces a new one with a few products renamed, moved to another aisle, or added.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

PRODUCT_COLUMNS = ("product_id", "product_name", "aisle_id", "department_id")

RENAME_SUFFIXES = (
    "Family Size",
    "New Recipe",
    "Value Pack",
    "Limited Edition",
    "Reduced Sugar",
    "Original",
    "Twin Pack",
)
NEW_PRODUCT_VARIANTS = (
    "Minis",
    "Zero Sugar",
    "Sea Salt",
    "Honey Roasted",
    "Vanilla Bean",
    "Extra Crunchy",
    "Lightly Sweetened",
    "Single Serve",
    "Club Pack",
    "Spicy",
)


@dataclass(frozen=True)
class Catalog:
    """Products (row-aligned arrays, sorted by product_id) plus the aisle and department tables."""

    product_id: np.ndarray
    product_name: tuple[str, ...]
    aisle_id: np.ndarray
    department_id: np.ndarray
    aisles: tuple[tuple[int, str], ...]
    departments: tuple[tuple[int, str], ...]

    @property
    def size(self) -> int:
        return len(self.product_id)

    def product_rows(self) -> list[tuple[int, str, int, int]]:
        return list(
            zip(
                self.product_id.tolist(),
                self.product_name,
                self.aisle_id.tolist(),
                self.department_id.tolist(),
                strict=True,
            )
        )


@dataclass(frozen=True)
class CatalogChanges:
    """What one increment did to the catalog, so tests and callers can check it."""

    renamed: tuple[int, ...]
    moved: tuple[int, ...]
    added: tuple[int, ...]


def _data_text(name: str) -> str:
    resource = resources.files(__package__).joinpath("data", name)
    raw = resource.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def _read_id_name_table(text: str) -> tuple[tuple[int, str], ...]:
    rows = list(csv.reader(io.StringIO(text)))
    return tuple((int(row[0]), row[1]) for row in rows[1:])


def _parse_products(text: str, source: str) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, np.ndarray]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise ValueError(f"products file {source} is empty")
    missing = [column for column in PRODUCT_COLUMNS if column not in header]
    if missing:
        raise ValueError(f"products file {source} lacks column(s) {', '.join(missing)}")
    positions = [header.index(column) for column in PRODUCT_COLUMNS]
    ids, names, aisles, departments = [], [], [], []
    for line_number, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            ids.append(int(row[positions[0]]))
            aisles.append(int(row[positions[2]]))
            departments.append(int(row[positions[3]]))
        except (ValueError, IndexError) as error:
            raise ValueError(f"products file {source} line {line_number}: bad id ({error})") from None
        names.append(row[positions[1]])
    if not ids:
        raise ValueError(f"products file {source} has no products")
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    product_id = np.asarray(ids, dtype=np.int64)[order]
    if product_id[0] < 1 or np.any(np.diff(product_id) == 0):
        raise ValueError(f"products file {source}: product_id values must be unique positive integers")
    return (
        product_id,
        tuple(names[i] for i in order),
        np.asarray(aisles, dtype=np.int64)[order],
        np.asarray(departments, dtype=np.int64)[order],
    )


def load_catalog(products_file: Path | None = None) -> Catalog:
    """Load the shipped real catalog, or the given products file against the real aisles/departments."""
    aisles = _read_id_name_table(_data_text("aisles.csv"))
    departments = _read_id_name_table(_data_text("departments.csv"))
    if products_file is None:
        text, source = _data_text("products.csv.gz"), "products.csv.gz (shipped)"
    else:
        path = Path(products_file)
        if not path.is_file():
            raise ValueError(f"products_file {path} does not exist or is not a file")
        text, source = path.read_text(encoding="utf-8"), str(path)
    product_id, names, aisle_id, department_id = _parse_products(text, source)
    unknown_aisles = np.setdiff1d(aisle_id, [a for a, _ in aisles])
    if unknown_aisles.size:
        raise ValueError(f"products file {source}: unknown aisle_id {unknown_aisles[:5].tolist()}")
    unknown_departments = np.setdiff1d(department_id, [d for d, _ in departments])
    if unknown_departments.size:
        raise ValueError(f"products file {source}: unknown department_id {unknown_departments[:5].tolist()}")
    return Catalog(product_id, names, aisle_id, department_id, aisles, departments)


def write_catalog_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    """Write with the real files' quoting: fields quoted only when they hold a comma or a quote."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _aisle_departments(catalog: Catalog) -> dict[int, int]:
    return dict(zip(catalog.aisle_id.tolist(), catalog.department_id.tolist(), strict=True))


def evolve_catalog(
    rng: np.random.Generator, catalog: Catalog, renames: int, moves: int, additions: int
) -> tuple[Catalog, CatalogChanges]:
    """Rename, move and add a few products, as a retailer's weekly catalog extract would show."""
    names = list(catalog.product_name)
    aisle_id = catalog.aisle_id.copy()
    department_id = catalog.department_id.copy()
    picked = rng.choice(catalog.size, size=min(renames + moves, catalog.size), replace=False)
    renamed_rows, moved_rows = picked[:renames], picked[renames:]
    for row in renamed_rows.tolist():
        suffix = RENAME_SUFFIXES[int(rng.integers(len(RENAME_SUFFIXES)))]
        names[row] = f"{names[row].removesuffix(', ' + suffix)}, {suffix}"
    department_of_aisle = _aisle_departments(catalog)
    aisle_choices = np.array(sorted(department_of_aisle), dtype=np.int64)
    moved = []
    for row in moved_rows.tolist():
        same_department = [
            a
            for a in aisle_choices.tolist()
            if department_of_aisle[a] == department_id[row] and a != aisle_id[row]
        ]
        options = same_department or [a for a in aisle_choices.tolist() if a != aisle_id[row]]
        if not options:
            continue
        target = options[int(rng.integers(len(options)))]
        aisle_id[row] = target
        department_id[row] = department_of_aisle[target]
        moved.append(int(catalog.product_id[row]))
    existing = set(names)
    source_rows = rng.choice(catalog.size, size=additions, replace=True)
    new_ids = np.arange(additions, dtype=np.int64) + int(catalog.product_id.max()) + 1
    new_names = []
    for row in source_rows.tolist():
        variant = NEW_PRODUCT_VARIANTS[int(rng.integers(len(NEW_PRODUCT_VARIANTS)))]
        name = f"{names[row]} {variant}"
        while name in existing:
            name = f"{name} {variant}"
        existing.add(name)
        new_names.append(name)
    evolved = replace(
        catalog,
        product_id=np.concatenate([catalog.product_id, new_ids]),
        product_name=tuple(names) + tuple(new_names),
        aisle_id=np.concatenate([aisle_id, aisle_id[source_rows]]),
        department_id=np.concatenate([department_id, department_id[source_rows]]),
    )
    changes = CatalogChanges(
        renamed=tuple(int(i) for i in catalog.product_id[renamed_rows]),
        moved=tuple(moved),
        added=tuple(int(i) for i in new_ids),
    )
    return evolved, changes
