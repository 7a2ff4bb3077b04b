"""What a serving store holds beside the recommendations: each product's similar items for one version.

The `similar_items` consumption asset (`consumption/similar_items.py`) is loaded with the
recommendations of the same serving version, so one switch activates both and one cleanup removes
both. This module is what the SQLite and DynamoDB stores share: the record `similar()` returns and
the one input path (`iter_product_lists`) that validates rows and groups them per product.

As in `recommendations.py`, pyarrow is imported only by the load path: the read path needs the
standard library alone (the serving Lambda ships no pyarrow).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from instarec_assets.backends.recommendations import ServingStoreError

MAX_SIMILAR_RANK = 20  # the asset keeps the top 20 per product (SIMILAR_TOP_K)
SIMILAR_COLUMNS = (
    "product_id",
    "rank",
    "similar_product_id",
    "product_name",
    "aisle",
    "department",
    "score",
)
# One entry of a product's list as stored (the anchor product_id is the key).
SIMILAR_FIELDS = ("rank", "product_id", "product_name", "aisle", "department", "score")

SimilarItemsInput = Any  # a pyarrow Table, RecordBatchReader, or an iterable of Tables/RecordBatches


@dataclass(frozen=True, slots=True)
class SimilarItem:
    rank: int
    product_id: int
    product_name: str
    aisle: str
    department: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SimilarProducts:
    """A product's similar items from the version current when read; items sorted by rank."""

    product_id: int
    version: str
    items: tuple[SimilarItem, ...]


def similar_from_entry(entry: tuple[Any, ...] | list[Any]) -> SimilarItem:
    rank, product_id, product_name, aisle, department, score = entry
    return SimilarItem(int(rank), int(product_id), product_name, aisle, department, float(score))


def _as_table(similar_items: SimilarItemsInput) -> Any:
    import pyarrow as pa

    if isinstance(similar_items, pa.Table):
        return similar_items
    if isinstance(similar_items, pa.RecordBatch):
        return pa.Table.from_batches([similar_items])
    if isinstance(similar_items, pa.RecordBatchReader):
        return similar_items.read_all()
    if isinstance(similar_items, (str, bytes, dict)):
        raise ServingStoreError(
            f"similar items must be a pyarrow Table or batches of one; got {type(similar_items).__name__}"
        )
    try:
        parts = [
            part if isinstance(part, pa.Table) else pa.Table.from_batches([part]) for part in similar_items
        ]
    except TypeError:
        raise ServingStoreError(
            f"similar items must be a pyarrow Table or batches of one; got {type(similar_items).__name__}"
        ) from None
    return pa.concat_tables(parts) if parts else None


def iter_product_lists(similar_items: SimilarItemsInput) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
    """Validated rows grouped per anchor product: `(product_id, [(rank, similar_product_id, name,
    aisle, department, score), ...])` by rank. Errors name the column and the first bad value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _as_table(similar_items)
    if table is None or table.num_rows == 0:
        return
    missing = [name for name in SIMILAR_COLUMNS if name not in table.column_names]
    if missing:
        raise ServingStoreError(f"similar items are missing column(s): {', '.join(missing)}")
    types = {
        "product_id": pa.int64(),
        "rank": pa.int64(),
        "similar_product_id": pa.int64(),
        "product_name": pa.string(),
        "aisle": pa.string(),
        "department": pa.string(),
        "score": pa.float64(),
    }
    columns = {}
    for name, kind in types.items():
        column = table.column(name)
        if column.null_count:
            raise ServingStoreError(f"similar items column {name} has {column.null_count} null value(s)")
        try:
            columns[name] = column.cast(kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise ServingStoreError(
                f"similar items column {name} ({column.type}) cannot be read as {kind}: {error}"
            ) from None
    table = pa.table(columns).sort_by([("product_id", "ascending"), ("rank", "ascending")])
    bad = pc.filter(table["product_id"], pc.less_equal(table["product_id"], 0))
    if len(bad):
        raise ServingStoreError(f"similar items column product_id must be positive; found {bad[0].as_py()}")
    ranks = table["rank"]
    bad = pc.filter(ranks, pc.or_(pc.less(ranks, 1), pc.greater(ranks, MAX_SIMILAR_RANK)))
    if len(bad):
        raise ServingStoreError(
            f"similar items column rank must be 1..{MAX_SIMILAR_RANK}; found {bad[0].as_py()}"
        )
    itself = pc.filter(table["product_id"], pc.equal(table["product_id"], table["similar_product_id"]))
    if len(itself):
        raise ServingStoreError(f"similar items list product {itself[0].as_py()} as similar to itself")
    anchors = table["product_id"].to_pylist()
    entries = zip(
        *(table[name].to_pylist() for name in ("rank", "similar_product_id", "product_name", "aisle")),
        table["department"].to_pylist(),
        table["score"].to_pylist(),
        strict=True,
    )
    current: int | None = None
    rows: list[tuple[Any, ...]] = []
    for anchor, entry in zip(anchors, entries, strict=True):
        if not math.isfinite(entry[5]) or entry[5] < 0:
            raise ServingStoreError(
                f"similar items column score must be a finite number >= 0; found {entry[5]} for product {anchor}"
            )
        if anchor != current:
            if current is not None:
                yield current, rows
            current, rows = anchor, []
        elif rows and rows[-1][0] == entry[0]:
            raise ServingStoreError(f"similar items of product {anchor} have rank {entry[0]} more than once")
        rows.append(entry)
    if current is not None:
        yield current, rows
