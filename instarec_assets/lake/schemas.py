"""The landing format (Instacart's Kaggle files) and the lake's zone and table names."""

from dataclasses import dataclass


@dataclass(frozen=True)
class LandingFile:
    """One landed CSV file: its name in the landing folder and the exact columns it must carry."""

    table: str
    file_stem: str
    columns: tuple[str, ...]

    @property
    def file_names(self) -> tuple[str, str]:
        """Accepted names, plain or gzip-compressed."""
        return (f"{self.file_stem}.csv", f"{self.file_stem}.csv.gz")


LANDING_FILES: dict[str, LandingFile] = {
    spec.table: spec
    for spec in (
        LandingFile(
            "orders",
            "orders",
            (
                "order_id",
                "user_id",
                "eval_set",
                "order_number",
                "order_dow",
                "order_hour_of_day",
                "days_since_prior_order",
            ),
        ),
        LandingFile(
            "order_products_prior",
            "order_products__prior",
            ("order_id", "product_id", "add_to_cart_order", "reordered"),
        ),
        LandingFile(
            "order_products_train",
            "order_products__train",
            ("order_id", "product_id", "add_to_cart_order", "reordered"),
        ),
        LandingFile("products", "products", ("product_id", "product_name", "aisle_id", "department_id")),
        LandingFile("aisles", "aisles", ("aisle_id", "aisle")),
        LandingFile("departments", "departments", ("department_id", "department")),
    )
}

# Lineage columns every raw row carries next to the landed (text) columns.
RAW_LINEAGE_COLUMNS: tuple[str, ...] = (
    "_source_file",
    "_source_row",
    "_ingested_at",
    "_parse_error",
    "_raw_line",
)

ZONES: tuple[str, ...] = ("raw", "clean", "curated", "consumption")

SUCCESS_MARKER = "_SUCCESS"
