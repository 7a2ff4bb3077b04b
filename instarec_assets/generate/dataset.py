"""generate_dataset: dated landing folders of Instacart-format files, a full snapshot then increments."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .baskets import Lines, make_lines
from .catalog import Catalog, CatalogChanges, evolve_catalog, load_catalog
from .orders import DAY_WEIGHTS, HOUR_WEIGHTS, TRAIN, Orders, make_orders, orders_per_batch
from .popularity import product_traits
from .users import ProductSamplers, make_users
from .writer import write_catalog, write_lines, write_orders

MAX_USERS = 250_000
NEW_USER_SHARE = (0.01, 0.02)
RENAMES_PER_BATCH = 5
MOVES_PER_BATCH = 5
NEW_PRODUCT_SHARE = 0.0005
MIN_NEW_PRODUCTS = 5
SUCCESS_MARKER = "_SUCCESS"
FILES = (
    "orders.csv",
    "order_products__prior.csv",
    "order_products__train.csv",
    "products.csv",
    "aisles.csv",
    "departments.csv",
)


@dataclass(frozen=True)
class BatchSummary:
    """What one landing folder holds; `changes` is None for the first (full) snapshot."""

    partition: str
    folder: Path
    users: int
    orders: int
    prior_lines: int
    train_lines: int
    products: int
    aisles: int
    departments: int
    changes: CatalogChanges | None

    @property
    def rows(self) -> dict[str, int]:
        counts = (
            self.orders,
            self.prior_lines,
            self.train_lines,
            self.products,
            self.aisles,
            self.departments,
        )
        return dict(zip(FILES, counts, strict=True))

    def describe(self) -> str:
        counts = " ".join(f"{name.removesuffix('.csv')}={count:,}" for name, count in self.rows.items())
        return f"{self.partition} {self.folder} users={self.users:,} {counts}"


@dataclass(frozen=True)
class GenerateSummary:
    """One BatchSummary per landing folder, in date order."""

    out_dir: Path
    seed: int
    batches: tuple[BatchSummary, ...]

    def lines(self) -> list[str]:
        return [batch.describe() for batch in self.batches]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low:,} and {high:,}" if high is not None else f"at least {low:,}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def _evolve(
    rng: np.random.Generator, base: Catalog, batches: int
) -> tuple[list[Catalog], list[CatalogChanges | None], Catalog, np.ndarray]:
    """Catalog per batch, plus a launch catalog (every product in its original aisle) and launch batches."""
    catalogs: list[Catalog] = [base]
    changes: list[CatalogChanges | None] = [None]
    additions = max(MIN_NEW_PRODUCTS, round(base.size * NEW_PRODUCT_SHARE))
    for _ in range(1, batches):
        evolved, change = evolve_catalog(rng, catalogs[-1], RENAMES_PER_BATCH, MOVES_PER_BATCH, additions)
        catalogs.append(evolved)
        changes.append(change)
    final = catalogs[-1]
    sizes = [catalog.size for catalog in catalogs]
    launch_batch = np.zeros(final.size, dtype=np.int16)
    for index in range(1, batches):
        launch_batch[sizes[index - 1] : sizes[index]] = index
    launch = replace(
        final,
        product_name=tuple(base.product_name) + final.product_name[base.size :],
        aisle_id=np.concatenate([base.aisle_id, final.aisle_id[base.size :]]),
        department_id=np.concatenate([base.department_id, final.department_id[base.size :]]),
    )
    return catalogs, changes, launch, launch_batch


def _join_batches(rng: np.random.Generator, users: int, batches: int) -> np.ndarray:
    newcomers = [max(1, round(users * rng.uniform(*NEW_USER_SHARE))) for _ in range(1, batches)]
    return np.repeat(np.arange(batches, dtype=np.int16), [users, *newcomers])


def _prepare_folder(folder: Path) -> None:
    """Drop a stale success marker first so a sensor never reads a half-rewritten folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUCCESS_MARKER).unlink(missing_ok=True)


def generate_dataset(
    out_dir: Path,
    users: int = 1000,
    seed: int = 0,
    batches: int = 1,
    products_file: Path | None = None,
    start_date: datetime.date = datetime.date(2025, 1, 6),
    batch_interval_days: int = 7,
) -> GenerateSummary:
    """Write `batches` dated landing folders of synthetic Instacart-format data under out_dir.

    users: shoppers in the first snapshot; 100 upwards is meaningful, 206,209 matches the real dataset
    (at most 250,000). The first folder is a full snapshot; each later one is an increment holding only
    new orders (returning and new users), lines of earlier test orders that became prior, and the full
    current catalog. The same arguments always give byte-identical files.
    """
    users = _check_int("users", users, 1, MAX_USERS)
    seed = _check_int("seed", seed, 0)
    batches = _check_int("batches", batches, 1)
    batch_interval_days = _check_int("batch_interval_days", batch_interval_days, 1)
    if not isinstance(start_date, datetime.date):
        raise ValueError(f"start_date must be a datetime.date, got {start_date!r}")
    if isinstance(start_date, datetime.datetime):
        start_date = start_date.date()
    base = load_catalog(Path(products_file) if products_file is not None else None)
    out_dir = Path(out_dir)

    rng = np.random.default_rng(seed)
    catalogs, changes, launch, launch_batch = _evolve(rng, base, batches)
    traits = product_traits(launch)
    samplers = ProductSamplers.build(launch, traits, np.ones(launch.size, dtype=bool))
    base_samplers = ProductSamplers.build(launch, traits, launch_batch == 0)
    join_batch = _join_batches(rng, users, batches)
    people = make_users(rng, join_batch, launch, traits, base_samplers, DAY_WEIGHTS, HOUR_WEIGHTS)
    orders = make_orders(rng, people, orders_per_batch(rng, people, batches))
    lines = make_lines(rng, people, orders, samplers, base_samplers, launch_batch)
    del people

    line_release = orders.release_batch[lines.order]
    line_is_train = orders.eval_set[lines.order] == TRAIN
    summaries = []
    for batch in range(batches):
        partition = (start_date + datetime.timedelta(days=batch * batch_interval_days)).isoformat()
        folder = out_dir / partition
        _prepare_folder(folder)
        in_batch = orders.batch == batch
        write_orders(
            folder / "orders.csv",
            orders.order_id[in_batch],
            orders.user[in_batch] + 1,
            orders.eval_set[in_batch],
            orders.number[in_batch],
            orders.day[in_batch],
            orders.hour[in_batch],
            orders.days_since[in_batch],
        )
        released = line_release == batch
        prior_lines = _write_lines(folder, "prior", released & ~line_is_train, orders, lines, launch)
        train_lines = _write_lines(folder, "train", released & line_is_train, orders, lines, launch)
        write_catalog(folder, catalogs[batch])
        (folder / SUCCESS_MARKER).touch()
        summaries.append(
            BatchSummary(
                partition=partition,
                folder=folder,
                users=len(np.unique(orders.user[in_batch])),
                orders=int(in_batch.sum()),
                prior_lines=prior_lines,
                train_lines=train_lines,
                products=catalogs[batch].size,
                aisles=len(catalogs[batch].aisles),
                departments=len(catalogs[batch].departments),
                changes=changes[batch],
            )
        )
    return GenerateSummary(out_dir=out_dir, seed=seed, batches=tuple(summaries))


def _write_lines(
    folder: Path, name: str, wanted: np.ndarray, orders: Orders, lines: Lines, launch: Catalog
) -> int:
    chosen = np.flatnonzero(wanted)
    write_lines(
        folder / f"order_products__{name}.csv",
        orders.order_id[lines.order[chosen]],
        launch.product_id[lines.product[chosen]],
        lines.add_to_cart[chosen],
        lines.reordered[chosen],
    )
    return len(chosen)
