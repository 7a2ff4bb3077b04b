"""One clean step as plain data: what it reads and where it stages, run on either engine's connection.

The clean assets build a CleanRequest; on DuckDB they run it in process. On Spark they write it as
`_request.json` into the step's staging location (a local folder, or an s3:// prefix on EMR
Serverless) and start the Pipes job (instarec_assets/spark/clean_job.py) with that location; the
job runs the same function on a SparkConnection, stages the two tables there and writes the
CleanResult as `_result.json` last, which the asset reads back and publishes from.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from instarec_assets.lake.accounting import CleanResult, RowAccounting
from instarec_assets.lake.clean_catalog import AISLES, DEPARTMENTS, clean_dimension, clean_products
from instarec_assets.lake.clean_order_products import clean_order_products
from instarec_assets.lake.clean_orders import ForgetList, clean_orders
from instarec_assets.lake.duck import StagedParquet
from instarec_assets.lake.staging import (
    read_staged_result,
    require_staged,
    staging_location,
    write_staged_request,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# The engines (ComputeResource.engine); SQLGlot and pyspark are imported only on the Spark side.
DUCKDB_ENGINE = "duckdb"
SPARK_ENGINE = "spark"
# The Spark master of the local engine (tests, `instarec materialize --engine spark`).
LOCAL_SPARK_MASTER = "local[2]"

CLEAN_TABLES = ("orders", "order_products", "products", "aisles", "departments")


@dataclass(frozen=True)
class CleanRequest:
    """One table's clean step for one partition. `history`: this clean table's earlier partitions,
    oldest first (the catalog tables read only the last); `inputs`: the other URIs it reads."""

    table: str
    partition_date: str
    staging: str
    inputs: dict[str, Any]
    history: tuple[str, ...] = ()
    forget_salt: str = field(default="", repr=False)
    forget_hashes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "history": list(self.history), "forget_hashes": list(self.forget_hashes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CleanRequest:
        return cls(
            **{
                **data,
                "history": tuple(data.get("history", ())),
                "forget_hashes": tuple(data.get("forget_hashes", ())),
            }
        )


def run_clean_step(conn, request: CleanRequest) -> CleanResult:
    """Run the request's clean function on `conn`: a DuckDB connection or a SparkConnection."""
    inputs, scratch = request.inputs, staging_location(request.staging)
    day = dt.date.fromisoformat(request.partition_date)
    previous = request.history[-1] if request.history else None
    if request.table == "orders":
        forget = ForgetList(request.forget_salt, frozenset(request.forget_hashes))
        return clean_orders(conn, inputs["raw_orders"], list(request.history), scratch, forget)
    if request.table == "order_products":
        return clean_order_products(
            conn,
            inputs["raw_order_products_prior"],
            inputs["raw_order_products_train"],
            list(inputs["clean_orders"]),
            inputs["clean_products"],
            list(request.history),
            scratch,
            inputs.get("quarantined_orders"),
        )
    if request.table == "products":
        return clean_products(
            conn,
            inputs["raw_products"],
            previous,
            inputs["clean_aisles"],
            inputs["clean_departments"],
            day,
            scratch,
        )
    if request.table in ("aisles", "departments"):
        dimension = AISLES if request.table == "aisles" else DEPARTMENTS
        return clean_dimension(conn, dimension, inputs[f"raw_{request.table}"], previous, day, scratch)
    raise ValueError(f"no clean step for table {request.table!r} (one of {', '.join(CLEAN_TABLES)})")


def result_as_json(result: CleanResult) -> dict[str, Any]:
    """A CleanResult as the Spark job reports it through Pipes."""
    return {
        "clean_path": str(result.clean.path),
        "clean_rows": result.clean.row_count,
        "quarantine_path": str(result.quarantine.path),
        "quarantine_rows": result.quarantine.row_count,
        "accounting": result.accounting.as_dict(),
        "outcome_counts": dict(result.outcome_counts),
    }


def result_from_json(data: dict[str, Any]) -> CleanResult:
    return CleanResult(
        clean=StagedParquet(staging_location(data["clean_path"]), int(data["clean_rows"])),
        quarantine=StagedParquet(staging_location(data["quarantine_path"]), int(data["quarantine_rows"])),
        accounting=RowAccounting(**{name: int(value) for name, value in data["accounting"].items()}),
        outcome_counts={name: int(value) for name, value in data["outcome_counts"].items()},
    )


def write_request(fs: AbstractFileSystem, request: CleanRequest) -> str:
    """`_request.json` in the request's staging location, through `fs` (local or the lake's S3); its
    URI. It carries the inputs (a long history list), and the forget list's salt, which must not
    travel in the job run's visible parameters."""
    return write_staged_request(fs, request.staging, request.as_json())


def read_result(fs: AbstractFileSystem, staging: str) -> CleanResult:
    """The CleanResult the job wrote last into `staging`, each table it names checked to be there;
    StagedResultMissing names what is missing."""
    result = result_from_json(read_staged_result(fs, staging))
    require_staged(fs, (result.clean.path, result.quarantine.path))
    return result
