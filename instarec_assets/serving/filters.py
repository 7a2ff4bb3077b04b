"""Request-time filters and configured business rules over a served list.

A request may narrow its answer with `exclude_departments`, `exclude_aisles`, `include_departments`
(department and aisle names as the responses show them, compared case-insensitively) and
`exclude_products` (product ids), each comma-separated. The configured rules
(`INSTAREC_SERVING_EXCLUDE_DEPARTMENTS`, `..._EXCLUDE_AISLES`, `..._EXCLUDE_PRODUCTS`, see
`settings.py`) apply to every response and are merged with the request's. The filter runs over the
candidates the store holds for the user or product, in rank order, so a filtered answer may be
shorter than k when too few candidates pass. Only the standard library: it ships in the Lambda.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

FILTER_PARAMETERS = ("exclude_departments", "exclude_aisles", "exclude_products", "include_departments")
MAX_VALUES = 50  # values per parameter
MAX_NAME_LENGTH = 100
MAX_PRODUCT_ID = 2_147_483_647


class FilterError(ValueError):
    """A filter value that is malformed; the message names the parameter (or variable) and value."""


@dataclass(frozen=True, slots=True)
class Filters:
    """Names are case-folded; `include_departments` None means every department."""

    exclude_departments: frozenset[str] = frozenset()
    exclude_aisles: frozenset[str] = frozenset()
    exclude_products: frozenset[int] = frozenset()
    include_departments: frozenset[str] | None = None

    def __bool__(self) -> bool:
        return bool(
            self.exclude_departments
            or self.exclude_aisles
            or self.exclude_products
            or self.include_departments is not None
        )

    def allows(self, product_id: int, aisle: str, department: str) -> bool:
        department = department.casefold()
        if self.include_departments is not None and department not in self.include_departments:
            return False
        return (
            product_id not in self.exclude_products
            and department not in self.exclude_departments
            and aisle.casefold() not in self.exclude_aisles
        )

    def merged(self, other: Filters) -> Filters:
        """Both sets of rules at once: exclusions add up, department inclusions intersect."""
        if not other:
            return self
        if not self:
            return other
        include = self.include_departments
        if other.include_departments is not None:
            include = other.include_departments if include is None else include & other.include_departments
        return Filters(
            self.exclude_departments | other.exclude_departments,
            self.exclude_aisles | other.exclude_aisles,
            self.exclude_products | other.exclude_products,
            include,
        )


def split_values(name: str, text: str) -> list[str]:
    """The comma-separated values of one parameter; FilterError names it on a bad value."""
    values = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not value for value in values):
        raise FilterError(f"{name} must be comma-separated values without empty entries")
    if len(values) > MAX_VALUES:
        raise FilterError(f"{name} holds {len(values)} values; at most {MAX_VALUES} are accepted")
    return values


def parse_names(name: str, text: str) -> frozenset[str]:
    names = split_values(name, text)
    for value in names:
        if len(value) > MAX_NAME_LENGTH or not value.isprintable():
            raise FilterError(
                f"{name} values must be printable names of at most {MAX_NAME_LENGTH} characters"
            )
    return frozenset(value.casefold() for value in names)


def parse_product_ids(name: str, text: str) -> frozenset[int]:
    ids = split_values(name, text)
    for value in ids:
        if not (value.isascii() and value.isdigit() and value[0] != "0") or int(value) > MAX_PRODUCT_ID:
            shown = (
                value
                if len(value) <= 20 and value.isprintable()
                else value[:20].encode("ascii", "replace").decode()
            )
            raise FilterError(
                f"{name} must list product ids (positive integers up to {MAX_PRODUCT_ID}); {shown!r} is not one"
            )
    return frozenset(int(value) for value in ids)


def parse_filters(values: Mapping[str, str], names: Mapping[str, str] | None = None) -> Filters:
    """Filters from parameter values (`FILTER_PARAMETERS` keys); `names` maps a parameter to what
    an error should call it (an environment variable for the configured rules)."""
    label = {parameter: (names or {}).get(parameter, parameter) for parameter in FILTER_PARAMETERS}
    include = values.get("include_departments")
    return Filters(
        exclude_departments=parse_names(label["exclude_departments"], values["exclude_departments"])
        if "exclude_departments" in values
        else frozenset(),
        exclude_aisles=parse_names(label["exclude_aisles"], values["exclude_aisles"])
        if "exclude_aisles" in values
        else frozenset(),
        exclude_products=parse_product_ids(label["exclude_products"], values["exclude_products"])
        if "exclude_products" in values
        else frozenset(),
        include_departments=parse_names(label["include_departments"], include)
        if include is not None
        else None,
    )


def apply_filters(
    rows: Iterable[tuple], filters: Filters, k: int, product_at: int = 1, aisle_at: int = 3
) -> list[tuple]:
    """The first k rows (in their order) that `filters` allows; rows hold the product id at
    `product_at`, then the aisle at `aisle_at` and the department right after it."""
    kept: list[tuple] = []
    for row in rows:
        if filters.allows(row[product_at], row[aisle_at], row[aisle_at + 1]):
            kept.append(row)
            if len(kept) == k:
                break
    return kept
