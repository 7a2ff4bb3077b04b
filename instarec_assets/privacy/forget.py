"""Forget a shopper (GDPR Art. 17, CCPA): remove one user from every zone, the landing copies, the
analysts' warehouse and the serving store, then append an audit record.

Dagster-free; the `forget_shopper` job (instarec_assets/assets/privacy.py) and `instarec forget`
call `forget_user` and `withdraw_request`. The order of the work makes a failed forget safe to run
again: the user's order ids are read from the orders tables and landing `orders.csv` files, so
those are rewritten last, after every file that is linked to the user only by an order id; the
warehouse (or, on AWS, the analysts' masked tables: analyst_tables.py) is rebuilt from the rewritten
clean zone and the serving store follows.

Models are not retrained for one user: the record names the stored model versions whose training
data held the user's rows (fitted on a batch at or after the user's first one); the next retrain
(instarec_assets/ml/retrain.py) fits on data without them.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import duckdb

from instarec_assets.lake.duck import attach_filesystem
from instarec_assets.lake.locations import PARTITION_DIR_PATTERN, LakeLocations
from instarec_assets.privacy.analyst_tables import AnalystTables, forget_in_analyst_tables, holds_user
from instarec_assets.privacy.clean_zone import clean_zone_as_of
from instarec_assets.privacy.lake_rewrite import (
    FORGET_ORDERS_TABLE,
    LANDING_KEYS,
    ORDERS_TABLES,
    lake_parquet_files,
    landing_files,
    rewrite_landing_csv,
    rewrite_parquet,
    table_of,
    user_order_ids,
)
from instarec_assets.privacy.requests import (
    FORGET,
    WITHDRAW,
    AuditRecord,
    ModelTrainedWith,
    Rewrite,
    append_record,
    forgotten_hashes,
    read_records,
    user_hash,
)
from instarec_assets.warehouse.build import build_warehouse_file, published_as_of, warehouse_path
from instarec_assets.warehouse.readonly import open_readonly
from instarec_assets.warehouse.salt import user_key

# model asset -> the file in its folder that records its version and fitting batch
MODEL_CARDS = {"xgboost_model": "model_card.json", "graphsage_model": "graphsage_config.json"}
RETRAIN_NOTE = (
    "Models are not retrained for one user: the listed versions were trained with the user's rows "
    "and stay as they are until the retrain policy fits new ones on data without them."
)


def os_user() -> str:
    """Who runs the command, for the audit record when no --requested-by is given."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "unknown"


class ForgetError(ValueError):
    """A forget or withdrawal that cannot be done: unknown user, nothing to withdraw."""


@dataclass(frozen=True)
class ForgetOutcome:
    record: AuditRecord
    audit_uri: str


class ServingStoreLike(Protocol):
    """What the procedure needs of a serving store (SQLite or DynamoDB)."""

    @property
    def subject(self) -> str: ...

    def forget_user(self, user_id: int) -> dict[str, int]: ...

    def top_k(self, user_id: int, k: int = 52): ...


Progress = Callable[[str], None]


def forget_user(
    locations: LakeLocations,
    user_id: int,
    *,
    salt: str,
    requested_by: str,
    reason: str,
    store: ServingStoreLike | None = None,
    analyst: AnalystTables | None = None,
    progress: Progress | None = None,
) -> ForgetOutcome:
    """Remove the user everywhere (with `analyst`, the analysts' masked tables on S3 too), then append
    the audit record; ForgetError for an unknown user."""
    say = progress or (lambda message: None)
    hashed = user_hash(user_id, salt)
    conn = duckdb.connect()
    attach_filesystem(conn, locations.filesystem)
    order_ids = user_order_ids(conn, locations, user_id)
    first_batch = _first_batch(conn, locations, user_id)
    in_store = store is not None and store.top_k(user_id, 1) is not None
    key = user_key(user_id, salt)
    in_warehouse = _warehouse_rows(locations, key) > 0 or (
        analyst is not None and holds_user(conn, locations, analyst, key)
    )
    if not (order_ids or in_store or in_warehouse):
        already = hashed in forgotten_hashes(read_records(locations))
        raise ForgetError(
            f"user {user_id} has already been forgotten; nothing of theirs is left to remove"
            if already
            else f"user {user_id} is unknown: no order in the lake or the landing area, no row in the "
            "warehouse or the serving store"
        )
    say(f"user's orders found: {len(order_ids):,}; first batch with the user: {first_batch or '-'}")
    models = _models_trained_with(locations, first_batch) if first_batch else ()
    rewrites: list[Rewrite] = []

    files = lake_parquet_files(locations)
    linked_last = [uri for uri in files if table_of(uri) in ORDERS_TABLES]
    for uri in [uri for uri in files if uri not in linked_last]:
        _add(rewrites, rewrite_parquet(conn, locations, uri, user_id), say)
    keys = set(order_ids)
    for stem in ("order_products__prior", "order_products__train"):
        for uri in landing_files(locations, stem):
            _add(rewrites, rewrite_landing_csv(locations, uri, LANDING_KEYS[stem], keys), say)
    for uri in linked_last:
        _add(rewrites, rewrite_parquet(conn, locations, uri, user_id), say)
    for uri in landing_files(locations, "orders"):
        _add(rewrites, rewrite_landing_csv(locations, uri, "user_id", {float(user_id)}), say)
    conn.close()
    _add(rewrites, _rebuild_warehouse(locations, salt, key), say)
    if analyst is not None:
        for rewrite in forget_in_analyst_tables(locations, analyst, salt, key, say):
            _add(rewrites, rewrite, say)
    if store is not None:
        removed = store.forget_user(user_id)
        for version, rows in sorted(removed.items()):
            _add(rewrites, Rewrite(f"{store.subject} version {version}", _store_kind(store), rows), say)
    record = AuditRecord(
        action=FORGET,
        user_hash=hashed,
        requested_by=requested_by,
        reason=reason,
        rewritten=tuple(rewrites),
        models_trained_with_user=models,
        note=RETRAIN_NOTE,
    )
    return ForgetOutcome(record, append_record(locations, record))


def withdraw_request(
    locations: LakeLocations, user_id: int, *, salt: str, requested_by: str, reason: str
) -> ForgetOutcome:
    """Lift a forget request, so later landings of the user are cleaned again (nothing is restored)."""
    hashed = user_hash(user_id, salt)
    if hashed not in forgotten_hashes(read_records(locations)):
        raise ForgetError(f"user {user_id} has no forget request in force; nothing to withdraw")
    record = AuditRecord(action=WITHDRAW, user_hash=hashed, requested_by=requested_by, reason=reason)
    return ForgetOutcome(record, append_record(locations, record))


def _add(rewrites: list[Rewrite], rewrite: Rewrite | None, say: Progress) -> None:
    if rewrite is not None:
        rewrites.append(rewrite)
        say(f"{rewrite.kind}: {rewrite.target}: {rewrite.rows_removed:,} rows removed")


def _store_kind(store: ServingStoreLike) -> str:
    return f"serving {getattr(store, 'backend', 'store')}"


def _first_batch(conn: duckdb.DuckDBPyConnection, locations: LakeLocations, user_id: int) -> str | None:
    """The earliest landing batch holding an order of the user (raw or clean)."""
    batches = []
    for table in ("raw_orders", "clean_orders"):
        zone = LakeLocations.zone_of(table)
        for key, uri in locations.partitions(zone, table).items():
            hit = conn.execute(
                "SELECT count(*) FROM read_parquet($uri, hive_partitioning = false) "
                "WHERE TRY_CAST(trim(CAST(user_id AS VARCHAR)) AS DOUBLE) = $user_id",
                {"uri": uri, "user_id": user_id},
            ).fetchall()[0][0]
            if hit:
                batches.append(key)
                break
    if not batches and conn.execute(f"SELECT count(*) FROM {FORGET_ORDERS_TABLE}").fetchall()[0][0]:
        return min(locations.landing_batches(), default=None)
    return min(batches, default=None)


def _models_trained_with(locations: LakeLocations, first_batch: str) -> tuple[ModelTrainedWith, ...]:
    """Stored model versions fitted on a batch at or after the user's first: their data held the user."""
    fs = locations.filesystem
    found: dict[str, ModelTrainedWith] = {}
    for model, card_name in MODEL_CARDS.items():
        root = f"{locations.models_uri()}/{model}"
        for folder in sorted(fs.glob(f"{root}/year=*/month=*/day=*")):
            match = PARTITION_DIR_PATTERN.search(folder)
            card = f"{folder}/{card_name}"
            if match is None or not fs.exists(card):
                continue
            with fs.open(card, "r") as handle:
                data = json.load(handle)
            fitted_on = data.get("trained_on_batch") or data.get("data_partition") or ""
            version = data.get("model_version", "")
            if fitted_on >= first_batch and version not in found:
                found[version] = ModelTrainedWith(model, fitted_on, version)
    return tuple(found.values())


def _warehouse_rows(locations: LakeLocations, key: str) -> int:
    path = warehouse_path(locations.home_path)
    if not path.exists():
        return 0
    with open_readonly(path) as conn:
        return int(conn.execute("SELECT count(*) FROM orders WHERE user_key = ?", [key]).fetchall()[0][0])


WAREHOUSE_COUNTS = ("orders", "order_products", "quarantine")


def _warehouse_counts(locations: LakeLocations) -> dict[str, int]:
    with open_readonly(warehouse_path(locations.home_path)) as conn:
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
            for table in WAREHOUSE_COUNTS
        }


def _rebuild_warehouse(locations: LakeLocations, salt: str, key: str) -> Rewrite | None:
    """Rebuild the published warehouse from the rewritten clean zone, as of the same batch (marts
    included, so no aggregate still counts the user); None when there is no warehouse."""
    path = warehouse_path(locations.home_path)
    as_of = published_as_of(path)
    if as_of is None:
        return None
    before = _warehouse_counts(locations)
    snapshot, quarantine = clean_zone_as_of(locations, as_of)
    build_warehouse_file(
        path,
        snapshot,
        salt,
        as_of,
        filesystem=locations.filesystem,
        quarantine=quarantine,
        full_reason="rebuilt by forget",
    )
    after = _warehouse_counts(locations)
    removed = sum(before[table] - after[table] for table in WAREHOUSE_COUNTS)
    if _warehouse_rows(locations, key):
        raise RuntimeError(f"{path}: the rebuilt warehouse still holds the user's orders")
    return Rewrite(str(path), "warehouse", removed, sum(after.values()))
