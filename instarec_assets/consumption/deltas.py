"""Delta partitions of the consumption tables: whether a batch re-scores every user or only the
affected ones, and which rows are current across a chain of partitions (newest full, then deltas)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from instarec_assets.lake.duck import StagedParquet, copy_to_parquet

FULL = "full"
DELTA = "delta"
# Delta partitions after a full one before the next batch is scored in full again (the pipeline
# passes INSTAREC_SERVING_MAX_DELTA_CHAIN, the serving store's limit on stacked delta versions).
MAX_DELTA_CHAIN = 8
CHAIN_POSITION = "chain_position"


@dataclass(frozen=True)
class PartitionRecord:
    """What an earlier reorder_predictions partition recorded: its mode and the model versions."""

    batch: str
    mode: str
    xgboost_version: str | None = None
    graphsage_version: str | None = None


@dataclass(frozen=True)
class ModelState:
    """The models of this batch: their versions and whether they were fitted on this batch."""

    xgboost_version: str
    xgboost_retrained: bool
    graphsage_version: str | None
    graphsage_retrained: bool


@dataclass(frozen=True)
class ScoringDecision:
    """Full or delta, why, the partition a delta builds on, and the deltas since the newest full one
    (this one included; 0 when full)."""

    mode: str
    reason: str
    base: str | None = None
    chain_length: int = 0


def decide_scoring_mode(
    previous_batch: str | None,
    base: PartitionRecord | None,
    earlier: Sequence[PartitionRecord],
    models: ModelState,
    *,
    full_rescore: bool = False,
    features_rebuilt: bool = False,
    max_chain: int = MAX_DELTA_CHAIN,
) -> ScoringDecision:
    """Decide once per batch. `previous_batch` is the registered batch before this one, `base` its
    predictions partition (None when it has none), `earlier` the partitions before it that `base`
    chains to, newest last. Any new model version changes every score, so only a batch scored with
    the base's models can be a delta."""
    if full_rescore:
        return ScoringDecision(FULL, "full_rescore requested by the run config")
    if previous_batch is None:
        return ScoringDecision(FULL, "first batch")
    if base is None:
        return ScoringDecision(FULL, f"previous batch {previous_batch} has no predictions to build on")
    if features_rebuilt:
        return ScoringDecision(FULL, "the features were rebuilt in full (every user affected)")
    if models.xgboost_retrained or models.xgboost_version != base.xgboost_version:
        return ScoringDecision(
            FULL, f"new XGBoost model {models.xgboost_version} (base {base.batch}: {base.xgboost_version})"
        )
    if models.graphsage_retrained or models.graphsage_version != base.graphsage_version:
        return ScoringDecision(
            FULL,
            f"new GraphSAGE model {models.graphsage_version} (base {base.batch}: {base.graphsage_version})",
        )
    chain = 0
    for record in reversed([*earlier, base]):
        if record.mode != DELTA:
            break
        chain += 1
    if chain + 1 > max_chain:
        return ScoringDecision(FULL, f"the serving chain would reach {chain + 1} deltas (limit {max_chain})")
    return ScoringDecision(DELTA, f"affected users re-scored over {base.batch}", base.batch, chain + 1)


def create_latest_rows_view(
    conn: duckdb.DuckDBPyConnection, name: str, uris: Sequence[str], keys: Sequence[str] = ("user_id",)
) -> None:
    """A temp view `name` of the current rows of a chain of partitions (oldest first: a full one, then
    deltas): for each key, every row of the newest partition that holds the key. The columns are the
    newest partition's, read by name from each."""
    if not uris:
        raise ValueError(f"{name}: a chain needs at least one partition")
    columns = conn.read_parquet(uris[-1], hive_partitioning=False).columns
    selected = ", ".join(f'"{column}"' for column in columns)
    tagged = None
    for position, uri in enumerate(uris):
        part = conn.read_parquet(uri, hive_partitioning=False).project(
            f"{selected}, {position}::INTEGER AS {CHAIN_POSITION}"
        )
        tagged = part if tagged is None else tagged.union(part)
    tagged.create_view(f"{name}_chain", replace=True)
    key_list = ", ".join(f'"{key}"' for key in keys)
    conn.execute(
        f"CREATE OR REPLACE TEMP VIEW {name} AS "
        f"SELECT * EXCLUDE ({CHAIN_POSITION}) FROM {name}_chain "
        f"QUALIFY {CHAIN_POSITION} = max({CHAIN_POSITION}) OVER (PARTITION BY {key_list})"
    )


def resolve_latest_rows(
    conn: duckdb.DuckDBPyConnection,
    uris: Sequence[str],
    out_path: Path,
    keys: Sequence[str] = ("user_id",),
    order_by: Sequence[str] = ("user_id",),
) -> StagedParquet:
    """The current rows of a chain of partitions (see create_latest_rows_view) written to one file."""
    create_latest_rows_view(conn, "latest_rows", uris, keys)
    try:
        order = ", ".join(f'"{column}"' for column in order_by)
        return copy_to_parquet(conn, f"SELECT * FROM latest_rows ORDER BY {order}", out_path)
    finally:
        conn.execute("DROP VIEW IF EXISTS latest_rows")
        conn.execute("DROP VIEW IF EXISTS latest_rows_chain")


SKIP = "skip"


@dataclass(frozen=True)
class ServingLoad:
    """What the serving load of a batch does: `full`, `delta` (on top of the active version) or
    `skip` (nothing to load: the active version stays), and the line the UI shows."""

    load: str
    line: str


def plan_serving_load(
    mode: str, base: str | None, active_batch: str | None, chain_rows: Sequence[tuple[str, int]]
) -> ServingLoad:
    """The load of this batch (`chain_rows`: its recommendations chain as (batch, rows), oldest first,
    this batch last). A delta goes on top of the active version when that version was built from the
    delta's base, or from an earlier batch of the chain whose later partitions are all empty (their
    loads were skipped); an empty delta over such a version loads nothing (a store refuses a version
    without rows, and an empty version would only lengthen every read's chain). Otherwise (a failed
    or rolled-back load, a rerun) every user's current list is loaded."""
    if mode != DELTA:
        return ServingLoad(FULL, "every user's current list")
    batches = [batch for batch, _ in chain_rows]
    rows = chain_rows[-1][1]
    servable = (
        active_batch is not None
        and active_batch in batches[:-1]
        and all(count == 0 for _, count in chain_rows[batches.index(active_batch) + 1 : -1])
    )
    if not servable:
        return ServingLoad(
            FULL,
            f"every user's current list: the active version's batch ({active_batch or 'none'}) is not "
            f"the delta base {base}",
        )
    if rows == 0:
        return ServingLoad(
            SKIP,
            f"nothing loaded: no affected users in this batch; the active version (batch {active_batch}) "
            "stays served, with its similar items",
        )
    return ServingLoad(
        DELTA, f"a delta version: the {rows} rows of this partition's users over {active_batch}"
    )
