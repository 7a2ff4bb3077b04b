"""GraphSAGE on the user-product graph, Dagster-free: user and product embeddings, a similarity
feature for XGBoost and explore recommendations for cold start.

- graph.py      the bipartite graph from the clean zone (DuckDB), node index maps and raw features
- graph_state.py both framings' graphs from one stored state, updated batch by batch
- config.py     hyperparameters and the feature encoding (JSON round-trip)
- sampling.py   CSR adjacency and fixed-size neighbour sampling in plain torch
- model.py      SAGEConv encoder (products <-> users) and the link / frequency decoder
- train.py      link prediction with negative sampling, held-out edges and metrics
- inductive.py  embeddings for any graph, nodes unseen in training included
- explore.py    similarity feature, explore items (nearest never-bought products)
- artifacts.py  state dict + config JSON, embeddings as parquet
- report.py     train + artifacts + plots, and the embeddings tables, for the assets
- synthetic.py  planted-structure and full-size random graphs for tests and the benchmark
"""

from instarec_assets.ml.graphsage.artifacts import (
    CONFIG_FILE,
    STATE_DICT_FILE,
    TRAINING_NODES_FILE,
    TrainingNodes,
    load_graphsage,
    save_graphsage,
)
from instarec_assets.ml.graphsage.config import FeatureEncoding, GraphSageParams
from instarec_assets.ml.graphsage.explore import (
    EmbeddingTable,
    SimilarityLookup,
    explore_from_lake,
    explore_items,
    load_embedding_table,
    similarity_feature,
    similarity_for_rows,
    with_similarity_sql,
)
from instarec_assets.ml.graphsage.graph import FRAMINGS, BipartiteGraph, build_graph, graph_from_pairs
from instarec_assets.ml.graphsage.inductive import GraphEmbeddings, embed_graph
from instarec_assets.ml.graphsage.model import GraphSageModel
from instarec_assets.ml.graphsage.report import (
    GraphSageReport,
    KeptGraphSage,
    decide_graphsage,
    embedding_tables,
    keep_graphsage,
    train_and_report,
)
from instarec_assets.ml.graphsage.train import TrainedGraphSage, train_graphsage

SIMILARITY_FEATURE = "gs_similarity"

__all__ = [
    "CONFIG_FILE",
    "FRAMINGS",
    "SIMILARITY_FEATURE",
    "STATE_DICT_FILE",
    "TRAINING_NODES_FILE",
    "BipartiteGraph",
    "EmbeddingTable",
    "FeatureEncoding",
    "GraphEmbeddings",
    "GraphSageModel",
    "GraphSageParams",
    "GraphSageReport",
    "KeptGraphSage",
    "SimilarityLookup",
    "TrainedGraphSage",
    "TrainingNodes",
    "build_graph",
    "decide_graphsage",
    "embed_graph",
    "embedding_tables",
    "explore_from_lake",
    "explore_items",
    "graph_from_pairs",
    "keep_graphsage",
    "load_embedding_table",
    "load_graphsage",
    "save_graphsage",
    "similarity_feature",
    "similarity_for_rows",
    "train_and_report",
    "train_graphsage",
    "with_similarity_sql",
]
