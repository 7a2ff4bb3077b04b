"""GraphSAGE: the user-product graph model beside XGBoost, and the embeddings it produces.

One step, three assets. `graphsage_model` trains on the bipartite graph of the clean zone as of the
partition (target framing: the prior lines, never a training label) and stores a state dict plus a
config JSON. The trained encoder then embeds both framings' graphs (inductively: products and users
with no training edges get embeddings too) into `user_embeddings` and `product_embeddings` in the
curated zone. One step, so the target graph is built once. Both graphs come from a state stored in
the model folder and updated from the previous batch's (ml/graphsage/graph_state.py). The logic
lives in instarec_assets.ml.graphsage.
"""

from collections.abc import Iterator

import numpy as np
from dagster import AssetExecutionContext, AssetOut, Config, MetadataValue, Output, multi_asset
from dagster_duckdb import DuckDBResource

from instarec_assets.assets.curated import CLEAN_SNAPSHOT_INS, clean_snapshot
from instarec_assets.assets.memory import release_freed_memory
from instarec_assets.assets.retraining import batches_since, decision_metadata, previous_model
from instarec_assets.io_managers import StagedArtifacts
from instarec_assets.lake.duck import StagedParquet
from instarec_assets.ml.graphsage import (
    CONFIG_FILE,
    FRAMINGS,
    GraphSageParams,
    decide_graphsage,
    embedding_tables,
    keep_graphsage,
    train_and_report,
)
from instarec_assets.ml.graphsage.artifacts import write_embeddings
from instarec_assets.ml.graphsage.graph_state import state_for_batch
from instarec_assets.ml.graphsage.incremental import PreviousEmbeddings, carried_embedding_tables
from instarec_assets.ml.graphsage.report import HEADLINE_METRICS
from instarec_assets.ml.metrics import png_markdown
from instarec_assets.ml.training import code_version
from instarec_assets.partitions import HISTORY_POOL, landing_batches
from instarec_assets.resources import ComputeResource, LakeResource, RetrainPolicyResource, lake_connection

GRAPH_KINDS = {"pytorch", "parquet"}
_DEFAULTS = GraphSageParams()


class GraphSageConfig(Config):
    """Run configuration of graphsage_model (the defaults fit the full dataset on 2 CPU cores)."""

    device: str = ""  # "" = the compute resource's graphsage_device, else cuda when available, else cpu
    epochs: int = _DEFAULTS.epochs
    edges_per_epoch: int = _DEFAULTS.edges_per_epoch or 0  # 0 = every training edge
    full_epochs: int = _DEFAULTS.full_epochs
    seed: int = _DEFAULTS.seed
    # Train a new model whatever the retrain policy says (the decision records it).
    force_retrain: bool = False
    # With a kept model, embed every node instead of carrying the unchanged ones over.
    embed_all: bool = False
    # Build the graph from the whole history instead of updating the previous batch's stored graph
    # (the two are equal; tested). For a lake whose earlier batches were re-landed after it was stored.
    full_graph: bool = False

    def params(self) -> GraphSageParams:
        return GraphSageParams(
            epochs=self.epochs,
            edges_per_epoch=self.edges_per_epoch or None,
            full_epochs=self.full_epochs,
            seed=self.seed,
        )

    def resolved_device(self, compute: ComputeResource) -> str:
        return self.device or compute.graphsage_device or "auto"


@multi_asset(
    name="graphsage_step",
    outs={
        "graphsage_model": AssetOut(
            io_manager_key="model_io_manager",
            group_name="models",
            kinds=GRAPH_KINDS,
            description=(
                "GraphSAGE (torch-geometric SAGEConv) on the user-product graph, trained for link "
                "prediction: state dict + config JSON + plots."
            ),
        ),
        "user_embeddings": AssetOut(
            io_manager_key="curated_io_manager",
            group_name="models",
            kinds=GRAPH_KINDS,
            description="GraphSAGE embedding of every user, per framing (target | serving).",
        ),
        "product_embeddings": AssetOut(
            io_manager_key="curated_io_manager",
            group_name="models",
            kinds=GRAPH_KINDS,
            description="GraphSAGE embedding of every current product, per framing (target | serving).",
        ),
    },
    ins=CLEAN_SNAPSHOT_INS,
    partitions_def=landing_batches,
    pool=HISTORY_POOL,
)
def graphsage_step(
    context: AssetExecutionContext,
    config: GraphSageConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
    compute: ComputeResource,
    retrain_policy: RetrainPolicyResource,
    clean_orders: list[str],
    clean_order_products: list[str],
    clean_products: str,
    clean_aisles: str,
    clean_departments: str,
) -> Iterator[Output]:
    """One step: train on the target graph (or keep the earlier model, by the retrain policy), then
    embed both framings with the encoder (both graphs from one state, updated from the previous
    model folder's; the serving graph adds the latest orders' lines)."""
    snapshot = clean_snapshot(
        clean_orders, clean_order_products, clean_products, clean_aisles, clean_departments
    )
    device = config.resolved_device(compute)
    previous = previous_model(context, lake, "graphsage_model", CONFIG_FILE)
    # Both framings' graphs from one stored state: the previous model folder's, updated with the
    # batches after it, or built from the whole history (graph_state.py says when and why).
    with lake_connection(duckdb, lake) as conn:
        update, graph_reason = state_for_batch(conn, snapshot, previous, full=config.full_graph)
        graph = update.state.graphs(conn, snapshot.products, ("target",))["target"]
    context.log.info(f"graph ({update.seconds:.1f} s, {graph_reason}): {graph.describe()}")
    graph_metadata = {
        "graph_build": MetadataValue.text(update.mode),
        "graph_build_reason": MetadataValue.text(graph_reason),
        "graph_build_seconds": MetadataValue.float(round(update.seconds, 3)),
        "graph_users_recomputed": MetadataValue.int(int(update.affected_users.size)),
    }
    decision = decide_graphsage(
        graph,
        previous[1] if previous else None,
        retrain_policy.policy,
        context.partition_key,
        batches_since(context),
        force=config.force_retrain,
    )
    context.log.info(f"retrain: {decision.retrain} ({decision.reason})")
    staging = lake.staging_dir(context.run_id, "graphsage_model")
    retrain_metadata = decision_metadata(decision, "drift_new_edge_share", previous[0] if previous else None)
    if decision.retrain:
        report = train_and_report(
            graph,
            staging,
            context.partition_key,
            params=config.params(),
            device=device,
            code_version=code_version(),
            log=context.log.info,
            threads=compute.threads,
            extra={"retrain": decision.as_dict()},
        )
        model, encoding, training_graph = report.trained.model, report.trained.encoding, graph
        model_config, model_dir = report.config, report.model_dir
        metrics = report.metrics
        model_metadata = {
            **{name: MetadataValue.float(float(metrics[name])) for name in HEADLINE_METRICS},
            "held_out_edges": MetadataValue.int(int(metrics["held_out_edges"])),
            "device": MetadataValue.text(report.trained.training["device"]),
            "mode": MetadataValue.text(report.trained.training["mode"]),
            **{
                f"plot_{name}": MetadataValue.md(png_markdown(path, name))
                for name, path in report.plots.items()
            },
        }
        del report
    else:
        kept = keep_graphsage(previous[1], staging, context.partition_key, decision)
        model, encoding, training_graph = kept.model, kept.encoding, kept.training_nodes
        model_config, model_dir = kept.config, kept.model_dir
        # The fitting batch's metrics (nothing was trained here).
        model_metadata = {
            f"trained_{name}": MetadataValue.float(float(value))
            for name, value in model_config.get("metrics", {}).items()
            if name in HEADLINE_METRICS and value is not None
        }
    update.state.write(model_dir)  # the next batch's graph starts from it
    model_version = model_config["model_version"]
    yield Output(
        StagedArtifacts(model_dir, commit_file=CONFIG_FILE),
        output_name="graphsage_model",
        metadata={
            "model_version": MetadataValue.text(model_version),
            **retrain_metadata,
            **graph_metadata,
            **model_metadata,
            **{f"graph_{name}": MetadataValue.int(value) for name, value in _counts(graph.describe())},
            "config": MetadataValue.json(
                {key: value for key, value in model_config.items() if key != "encoding"}
            ),
        },
    )

    scratch = lake.staging_dir(context.run_id, "graph_embeddings")
    with lake_connection(duckdb, lake) as conn:
        graphs = {"target": graph, **update.state.graphs(conn, snapshot.products, ("serving",))}
        changed_users = batch_users(conn, clean_orders[-1])
        if update.mode == "incremental":  # late lines moved these users' histories too
            changed_users = np.union1d(changed_users, update.affected_users)
        carried_from = (
            None if decision.retrain or config.embed_all else previous_embeddings(lake, conn, previous[0])
        )
        if carried_from is None:
            users, products, stats = embedding_tables(
                model, encoding, graphs, training_graph, device=device, threads=compute.threads
            )
        else:
            users, products, stats = carried_embedding_tables(
                model,
                encoding,
                graphs,
                training_graph,
                *carried_from,
                batch_user_ids=changed_users,
                threads=compute.threads,
                seed=int(model_config.get("params", {}).get("seed", 0)),
            )
        embedding_mode = _embedding_mode(decision.retrain, carried_from is not None, previous)
        del graphs, graph, training_graph, carried_from, update
        staged = {
            "user_embeddings": write_embeddings([users], scratch / "user_embeddings.parquet"),
            "product_embeddings": write_embeddings([products], scratch / "product_embeddings.parquet"),
        }
        for name, level in (("user_embeddings", "users"), ("product_embeddings", "products")):
            yield Output(
                staged[name],
                output_name=name,
                metadata={
                    "model_version": MetadataValue.text(model_version),
                    "embedding_dim": MetadataValue.int(int(model_config["architecture"]["embedding_dim"])),
                    "retrained": MetadataValue.bool(decision.retrain),
                    **{
                        f"{framing}_{level}": MetadataValue.int(int(stats[framing][level]))
                        for framing in FRAMINGS
                    },
                    **{
                        f"{framing}_{level}_without_training_edges": MetadataValue.int(
                            int(stats[framing][f"inductive_{level}"])
                        )
                        for framing in FRAMINGS
                    },
                    "seconds": MetadataValue.float(sum(stats[framing]["seconds"] for framing in FRAMINGS)),
                    **embedding_mode,
                    **_carried_metadata(stats, level),
                    "preview": _preview(conn, staged[name]),
                },
            )
    del model, users, products
    release_freed_memory()


def previous_embeddings(
    lake: LakeResource, conn, batch: str
) -> tuple[dict[str, PreviousEmbeddings], dict[str, PreviousEmbeddings]] | None:
    """The kept model's embeddings as the batch it was last kept or fitted in stored them (this
    step's own earlier output, the same weights; recorded as `embeddings_carried_from`), per framing;
    None when that batch has none."""
    locations = lake.locations
    uris = {
        name: locations.partition_uri("curated", name, batch)
        for name in ("user_embeddings", "product_embeddings")
    }
    if not all(locations.filesystem.exists(uri) for uri in uris.values()):
        return None
    found = []
    for name, id_column in (("user_embeddings", "user_id"), ("product_embeddings", "product_id")):
        table = conn.sql(
            "SELECT * FROM read_parquet($uri, hive_partitioning = false)", params={"uri": uris[name]}
        ).to_arrow_table()
        framing = table.column("framing").to_numpy(zero_copy_only=False)
        found.append(
            {key: PreviousEmbeddings.from_arrow(table.filter(framing == key), id_column) for key in FRAMINGS}
        )
    return found[0], found[1]


def batch_users(conn, orders_uri: str) -> np.ndarray:
    """The users with an order in this batch (their history moved: re-embedded, not carried)."""
    column = conn.sql(
        "SELECT DISTINCT user_id::BIGINT AS user_id FROM read_parquet($uri, hive_partitioning = false)",
        params={"uri": orders_uri},
    ).fetchnumpy()["user_id"]
    return np.asarray(column, dtype=np.int64)


def _embedding_mode(retrained: bool, carried: bool, previous: tuple[str, object] | None) -> dict:
    if carried:
        mode, source = "incremental", previous[0]
    else:
        mode = "full: model retrained" if retrained else "full: no earlier embeddings to carry (or embed_all)"
        source = "none"
    return {
        "embedding_mode": MetadataValue.text(mode),
        "embeddings_carried_from": MetadataValue.text(source),
    }


def _carried_metadata(stats: dict, level: str) -> dict:
    """Nodes embedded and carried per framing, and how far carried vectors are from a fresh embedding."""
    if "embedded_users" not in stats[FRAMINGS[0]]:
        return {}
    metadata = {}
    for framing in FRAMINGS:
        metadata[f"{framing}_{level}_embedded"] = MetadataValue.int(int(stats[framing][f"embedded_{level}"]))
        metadata[f"{framing}_{level}_carried"] = MetadataValue.int(int(stats[framing][f"carried_{level}"]))
        for name in ("carried_cosine_distance_max", "carried_cosine_distance_mean"):
            metadata[f"{framing}_{name}"] = MetadataValue.float(float(stats[framing][name]))
        metadata[f"{framing}_exactness_sample"] = MetadataValue.int(int(stats[framing]["exactness_sample"]))
    return metadata


def _counts(description: dict) -> list[tuple[str, int]]:
    return [(name, int(value)) for name, value in description.items() if isinstance(value, int)]


def _preview(conn, staged: StagedParquet) -> MetadataValue:
    """A preview without the long embedding lists (their first 3 values instead)."""
    path = str(staged.path).replace("'", "''")
    conn.execute(
        "CREATE OR REPLACE TEMP VIEW gs_preview AS SELECT * EXCLUDE (embedding), "
        f"embedding[1:3] AS embedding_head FROM read_parquet('{path}', hive_partitioning = false)"
    )
    try:
        frame = conn.execute("SELECT * FROM gs_preview LIMIT 5").df()
    finally:
        conn.execute("DROP VIEW IF EXISTS gs_preview")
    return MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "_no rows_")
