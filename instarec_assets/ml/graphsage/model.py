"""The network: a GraphSAGE encoder over the bipartite graph and a link decoder.

Encoder (heterogeneous GraphSAGE written out for two node types):
- input layer: users' scaled features -> Linear; products' aisle and department one-hot plus scaled
  numeric features -> Linear. The one-hot part is stored as indices and its weights as embedding
  tables, which is the same linear map as a Linear on the one-hot vector, without materialising it;
- `num_layers` rounds of message passing, each with two `torch_geometric.nn.SAGEConv` (mean
  aggregation, root weight): products -> users and users -> products; ReLU between layers.

Decoder: the link logit is the dot product of the user and product embeddings; a small MLP on their
element-wise product predicts the purchase frequency (times bought / the user's orders) of an edge.

The encoder runs on a sampled computation graph (training on the CPU), on the full graph with an
edge_index (full-batch training on a GPU), or on the full graph with sparse CSR adjacencies
(inference: SpMM, memory O(nodes x dims), never O(edges x dims)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch_geometric.nn import SAGEConv

from instarec_assets.ml.graphsage.config import FeatureEncoding, GraphSageParams
from instarec_assets.ml.graphsage.graph import NodeFeatures
from instarec_assets.ml.graphsage.sampling import SampledSubgraph


class GraphSageEncoder(nn.Module):
    def __init__(
        self,
        n_user_features: int,
        n_product_features: int,
        n_aisles: int,
        n_departments: int,
        hidden_dim: int = 64,
        embedding_dim: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.user_in = nn.Linear(n_user_features, hidden_dim)
        self.product_in = nn.Linear(n_product_features, hidden_dim)
        self.aisle = nn.Embedding(n_aisles, hidden_dim)
        self.department = nn.Embedding(n_departments, hidden_dim)
        dims = [hidden_dim] * num_layers + [embedding_dim]
        self.to_user = nn.ModuleList(
            SAGEConv((dims[layer], dims[layer]), dims[layer + 1]) for layer in range(num_layers)
        )
        self.to_product = nn.ModuleList(
            SAGEConv((dims[layer], dims[layer]), dims[layer + 1]) for layer in range(num_layers)
        )
        self.dropout = dropout
        self.num_layers = num_layers

    def input_users(self, features: NodeFeatures, ids: torch.Tensor | None = None) -> torch.Tensor:
        x = features.user_x if ids is None else features.user_x[ids]
        return self.user_in(x)

    def input_products(
        self, features: NodeFeatures, ids: torch.Tensor | None = None, new: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Product inputs; rows `new` (positions in `ids`, or a bool mask over all products) take the
        numeric features of a never-bought product (cold-start practice in training)."""
        if ids is None:
            x, aisle, department = features.product_x, features.product_aisle, features.product_department
        else:
            x = features.product_x[ids]
            aisle, department = features.product_aisle[ids], features.product_department[ids]
        if new is not None:
            x = x.clone()
            x[new] = features.new_product_x
        return self.product_in(x) + self.aisle(aisle) + self.department(department)

    def _activate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        if layer == self.num_layers - 1:
            return h
        h = torch.relu(h)
        return nn.functional.dropout(h, p=self.dropout, training=self.training) if self.dropout else h

    def forward_sampled(
        self, sub: SampledSubgraph, features: NodeFeatures, sparse: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the subgraph's seed nodes (local ids 0..counts[0]-1 of each type).

        On the CPU the aggregation is a sparse CSR x dense product (torch's SpMM-reduce kernels,
        about twice as fast as gather + scatter there); elsewhere PyG's gather + scatter. `sparse`
        forces one or the other."""
        h_user = self.input_users(features, sub.user_ids)
        h_product = self.input_products(features, sub.product_ids, sub.hidden_products)
        sparse = h_user.device.type == "cpu" if sparse is None else sparse
        for layer in range(self.num_layers):
            if sparse:
                to_user, to_product, n_users, n_products = sub.layer_adjacency(layer)
            else:
                to_user, to_product, n_users, n_products = sub.layer_edges(layer)
            new_user = self.to_user[layer]((h_product, h_user[:n_users]), to_user)
            new_product = self.to_product[layer]((h_user, h_product[:n_products]), to_product)
            h_user, h_product = self._activate(new_user, layer), self._activate(new_product, layer)
        return h_user, h_product

    def forward_full(
        self,
        features: NodeFeatures,
        to_user: torch.Tensor,
        to_product: torch.Tensor,
        new_products: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of every node. `to_user`: products -> users as an edge_index [2, E] (row 0
        product, row 1 user) or a sparse CSR matrix (users x products); `to_product` likewise.
        `new_products`: a bool mask of products posing as new (training only)."""
        h_user = self.input_users(features)
        h_product = self.input_products(features, new=new_products)
        n_users, n_products = h_user.shape[0], h_product.shape[0]
        for layer in range(self.num_layers):
            sparse = to_user.layout != torch.strided
            new_user = self.to_user[layer](
                (h_product, h_user), to_user, size=None if sparse else (n_products, n_users)
            )
            new_product = self.to_product[layer](
                (h_user, h_product), to_product, size=None if sparse else (n_users, n_products)
            )
            h_user, h_product = self._activate(new_user, layer), self._activate(new_product, layer)
        return h_user, h_product


class LinkDecoder(nn.Module):
    """Link logit = <user, product>; purchase frequency from an MLP on their element-wise product."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.frequency_head = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim), nn.ReLU(), nn.Linear(embedding_dim, 1)
        )

    def logits(self, h_user: torch.Tensor, h_product: torch.Tensor) -> torch.Tensor:
        return (h_user * h_product).sum(dim=-1)

    def frequency(self, h_user: torch.Tensor, h_product: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.frequency_head(h_user * h_product)).squeeze(-1)


class GraphSageModel(nn.Module):
    """Encoder + decoder, built from the JSON config alone (`architecture` below)."""

    def __init__(self, architecture: dict[str, Any]):
        super().__init__()
        self.architecture = dict(architecture)
        self.encoder = GraphSageEncoder(**architecture)
        self.decoder = LinkDecoder(architecture["embedding_dim"])

    @staticmethod
    def architecture_for(params: GraphSageParams, encoding: FeatureEncoding) -> dict[str, Any]:
        return {
            "n_user_features": len(encoding.user_feature_names),
            "n_product_features": len(encoding.product_feature_names),
            "n_aisles": encoding.n_aisles,
            "n_departments": encoding.n_departments,
            "hidden_dim": params.hidden_dim,
            "embedding_dim": params.embedding_dim,
            "num_layers": params.num_layers,
            "dropout": params.dropout,
        }
