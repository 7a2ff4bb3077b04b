"""What `instarec status` shows: each landing batch's state, the zone tables, models, warehouse and
the serving store's active version."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from dagster import AssetKey, DagsterInstance

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.schemas import ZONES
from instarec_assets.settings import Settings

MASKED_TABLES_ASSET = "analyst_masked_tables"
MODEL_ASSETS = ("xgboost_model", "graphsage_model")
MODEL_FILES = {"xgboost_model": "model_card.json", "graphsage_model": "graphsage_config.json"}


@dataclass(frozen=True)
class TableStatus:
    zone: str
    table: str
    rows_by_partition: dict[str, int]

    @property
    def latest_partition(self) -> str:
        return list(self.rows_by_partition)[-1]

    @property
    def latest_rows(self) -> int:
        return self.rows_by_partition[self.latest_partition]


@dataclass(frozen=True)
class ModelStatus:
    asset: str
    partition: str
    version: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LakeReport:
    home: str
    batches: list[dict]
    tables: list[TableStatus]
    models: list[ModelStatus]
    warehouse: str | None
    serving: dict | None
    masked: bool = False  # aws mode with an analysts' bucket: analyst_masked_tables, not the local file

    def to_json(self) -> str:
        payload = asdict(self)
        payload["tables"] = [
            {**asdict(table), "latest_partition": table.latest_partition, "latest_rows": table.latest_rows}
            for table in self.tables
        ]
        return json.dumps(payload, indent=2, sort_keys=True)

    def lines(self) -> list[str]:
        out = [f"instarec lake at {self.home}", ""]
        out += _table(
            ("BATCH", "STATE", "DETAIL"),
            [(batch["partition"], batch["state"], batch["detail"]) for batch in self.batches],
            empty="no landing batch yet",
        )
        out.append("")
        out += _table(
            ("ZONE", "TABLE", "BATCHES", "LATEST", "ROWS (LATEST)"),
            [
                (t.zone, t.table, str(len(t.rows_by_partition)), t.latest_partition, f"{t.latest_rows:,}")
                for t in self.tables
            ],
            right=(2, 4),
            empty="no table in the lake yet",
        )
        out.append("")
        out += _table(
            ("MODEL", "BATCH", "VERSION", "METRICS"),
            [
                (m.asset, m.partition, m.version, ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.items()))
                for m in self.models
            ],
            empty="no model yet",
        )
        out.append("")
        builder = "analyst_masked_tables" if self.masked else "analyst_warehouse"
        out.append(f"warehouse: {self.warehouse or f'not built yet (the {builder} asset builds it)'}")
        if self.serving:
            serving = self.serving
            # a delta holds only its batch's users; every other user reads through its base
            users = f"{serving['users']:,} user{'' if serving['users'] == 1 else 's'}"
            if serving.get("kind") == "delta" and serving.get("base_version"):
                users += f" updated over {serving['base_version']}"
            out.append(
                f"serving: version {serving['version']} active (batch {serving['batch'] or '-'}, "
                f"model {serving['model_version']}, {users}) in {serving['store']}"
            )
        else:
            out.append("serving: no version loaded yet")
        return out


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right=(), empty: str = "") -> list[str]:
    if not rows:
        return [empty]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    return [
        "  ".join(
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]


def lake_status(locations: LakeLocations) -> list[TableStatus]:
    """Every zone table with rows; a zone bucket that is missing or unreadable is an error in aws
    mode (not an empty lake), since it usually means a wrong bucket variable or missing access."""
    fs = locations.filesystem
    statuses = []
    for zone in ZONES:
        root = locations.zone_uri(zone)
        if not fs.exists(root):
            if locations.is_aws:
                raise ValueError(
                    f"{root} (INSTAREC_{zone.upper()}_BUCKET, the {zone} zone) does not exist "
                    "or cannot be read with these credentials"
                )
            continue
        fs.invalidate_cache()
        for entry in sorted(fs.ls(root, detail=False)):
            table = entry.rstrip("/").rsplit("/", 1)[-1]
            partitions = locations.partitions(zone, table)
            if not partitions:
                continue
            rows = {}
            for key, uri in partitions.items():
                with fs.open(uri, "rb") as stream:
                    rows[key] = pq.ParquetFile(stream).metadata.num_rows
            statuses.append(TableStatus(zone, table, rows))
    return statuses


def model_status(locations: LakeLocations, partitions: list[str]) -> list[ModelStatus]:
    """The newest stored version of each model among the batches, with its headline metrics."""
    fs = locations.filesystem
    models = []
    for asset in MODEL_ASSETS:
        for partition in sorted(partitions, reverse=True):
            card = f"{locations.model_uri(asset, partition)}/{MODEL_FILES[asset]}"
            if not fs.exists(card):
                continue
            with fs.open(card, "r") as stream:
                content = json.load(stream)
            models.append(ModelStatus(asset, partition, _version(content), _headline(content)))
            break
    return models


def _version(card: dict) -> str:
    return str(card.get("model_version") or card.get("version") or "-")


def _headline(card: dict) -> dict[str, float]:
    metrics = card.get("metrics") or {}
    picked = {name: metrics[name] for name in ("auc", "f1") if isinstance(metrics.get(name), int | float)}
    basket = metrics.get("basket_f1")
    if isinstance(basket, dict) and isinstance(basket.get("model_f1"), int | float):
        picked["basket_f1"] = basket["model_f1"]
    return picked


def masked_tables_in_use(locations: LakeLocations) -> bool:
    """aws mode with INSTAREC_ANALYST_BUCKET: the pipeline builds analyst_masked_tables, no local file."""
    return locations.is_aws and bool(Settings.from_env().analyst_bucket)


def warehouse_status(locations: LakeLocations, instance: DagsterInstance) -> str | None:
    """The local warehouse file; or, where the masked tables replace it, their bucket and the newest batch
    materialised (the catalog never goes back to an older one). None when not built yet."""
    from instarec_assets.warehouse.build import warehouse_path

    if masked_tables_in_use(locations):
        settings = Settings.from_env()
        batches = instance.get_materialized_partitions(AssetKey(MASKED_TABLES_ASSET))
        if not batches:
            return None
        return (
            f"masked tables in s3://{settings.analyst_bucket}/ (Glue database {settings.analyst_database}), "
            f"latest batch {max(batches)}"
        )
    path = Path(warehouse_path(locations.home_path))
    return str(path) if path.exists() else None


def batch_status(locations: LakeLocations, instance: DagsterInstance) -> list[dict]:
    """Each registered landing batch's state (complete / incomplete / failed / running), from the
    instance; runs whose local process died are marked failed first."""
    from instarec_assets.completeness import BatchTargets, batch_states, reap_dead_runs
    from instarec_assets.definitions import build_definitions
    from instarec_assets.partitions import LANDING_BATCHES
    from instarec_assets.sensors import LANDING_JOB_NAME

    if not locations.is_aws:
        reap_dead_runs(instance, LANDING_JOB_NAME)
    targets = BatchTargets.of(build_definitions(locations).resolve_asset_graph())
    partitions = instance.get_dynamic_partitions(LANDING_BATCHES)
    return [
        {
            "partition": state.partition,
            "state": state.state,
            "detail": state.detail,
            "run_id": state.run_id,
        }
        for state in batch_states(instance, LANDING_JOB_NAME, partitions, targets)
    ]


def lake_report(locations: LakeLocations, serving: dict | None) -> LakeReport:
    from instarec_assets.pipeline.runner import dagster_instance

    tables = lake_status(locations)
    instance = dagster_instance(locations)  # the process's instance, as `materialize` uses it
    batches = batch_status(locations, instance)
    partitions = sorted({batch["partition"] for batch in batches} | {t.latest_partition for t in tables})
    home = (
        ", ".join(locations.zone_uri(zone) for zone in ZONES)
        if locations.is_aws
        else str(locations.home_path)
    )
    return LakeReport(
        home=home,
        batches=batches,
        tables=tables,
        models=model_status(locations, partitions),
        warehouse=warehouse_status(locations, instance),
        serving=serving,
        masked=masked_tables_in_use(locations),
    )
