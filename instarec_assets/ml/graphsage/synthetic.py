"""Synthetic bipartite graphs with planted structure, for the tests and the benchmark.

Users fall into communities; each community owns a block of aisles. A user buys mostly products of
their community's aisles (skewed popularity inside an aisle) and a `noise` share of random products;
edge weights (times bought) are geometric. Departments cut across communities (aisle % n_departments),
so only the aisle tells a product's community.
"""

from __future__ import annotations

import numpy as np

from instarec_assets.ml.graphsage.graph import BipartiteGraph, graph_from_pairs


def planted_graph(
    n_users: int = 600,
    n_communities: int = 3,
    aisles_per_community: int = 2,
    products_per_aisle: int = 30,
    mean_degree: float = 12.0,
    noise: float = 0.1,
    n_departments: int = 3,
    seed: int = 0,
    first_user_id: int = 1,
    first_product_id: int = 1,
) -> BipartiteGraph:
    """A graph whose users' purchases follow their community's aisles (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_aisles = n_communities * aisles_per_community
    n_products = n_aisles * products_per_aisle
    product_aisle = np.repeat(np.arange(n_aisles), products_per_aisle)
    product_community = product_aisle // aisles_per_community
    user_community = rng.integers(0, n_communities, n_users)

    # Popularity inside each aisle: Zipf-like, so degrees are skewed like real products.
    rank = np.tile(np.arange(products_per_aisle), n_aisles)
    popularity = 1.0 / (1.0 + rank) ** 0.8
    by_community = [np.flatnonzero(product_community == c) for c in range(n_communities)]
    community_p = [popularity[index] / popularity[index].sum() for index in by_community]
    global_p = popularity / popularity.sum()

    degree = np.maximum(1, rng.poisson(mean_degree, n_users))
    users = np.repeat(np.arange(n_users), degree)
    from_noise = rng.random(users.size) < noise
    products = np.empty(users.size, dtype=np.int64)
    products[from_noise] = rng.choice(n_products, int(from_noise.sum()), p=global_p)
    for community in range(n_communities):
        rows = np.flatnonzero(~from_noise & (user_community[users] == community))
        products[rows] = rng.choice(by_community[community], rows.size, p=community_p[community])
    keys = np.unique(users.astype(np.int64) * n_products + products)
    edge_user, edge_product = keys // n_products, keys % n_products
    weight = rng.geometric(0.45, keys.size).astype(np.float32)
    max_weight = np.zeros(n_users, dtype=np.float32)
    np.maximum.at(max_weight, edge_user, weight)
    items = np.bincount(edge_user, weights=weight, minlength=n_users)
    orders = np.maximum(np.maximum(max_weight, np.round(items / 3.0)) + rng.integers(0, 3, n_users), 1)
    days = rng.uniform(3, 30, n_users).astype(np.float32)
    user_ids = np.arange(n_users, dtype=np.int64) + first_user_id
    product_ids = np.arange(n_products, dtype=np.int64) + first_product_id
    graph = graph_from_pairs(
        user_ids=user_ids[edge_user],
        product_ids=product_ids[edge_product],
        times_bought=weight,
        users=user_ids,
        user_orders=orders.astype(np.float32),
        user_days_between=days,
        products=product_ids,
        aisle_ids=product_aisle + 1,
        department_ids=product_aisle % n_departments + 1,
    )
    graph.user_community = user_community  # type: ignore[attr-defined]
    graph.product_community = product_community  # type: ignore[attr-defined]
    return graph


def random_graph(
    n_users: int = 206_209,
    n_products: int = 49_688,
    n_edges: int = 13_000_000,
    n_aisles: int = 134,
    n_departments: int = 21,
    seed: int = 0,
) -> BipartiteGraph:
    """A full-size bipartite graph for timing: skewed product popularity, about `n_edges` distinct
    pairs, users' purchases concentrated in a few aisles so the link task is learnable."""
    rng = np.random.default_rng(seed)
    product_aisle = rng.integers(0, n_aisles, n_products)
    popularity = 1.0 / (1.0 + rng.permutation(n_products)) ** 0.9
    # Each user prefers 3 aisles: 70 % of their draws come from those, 30 % from everything.
    favourites = rng.integers(0, n_aisles, (n_users, 3))
    by_aisle = [np.flatnonzero(product_aisle == a) for a in range(n_aisles)]
    aisle_p = [popularity[index] / popularity[index].sum() for index in by_aisle]
    aisle_cdf = [np.cumsum(p) for p in aisle_p]
    global_cdf = np.cumsum(popularity / popularity.sum())
    degree = rng.lognormal(0.0, 0.8, n_users)
    share = degree / degree.sum()
    keys = np.empty(0, dtype=np.int64)
    draws = n_edges
    # Draw, drop repeated pairs, and top up until there are n_edges distinct pairs.
    for _ in range(20):
        users = np.repeat(np.arange(n_users), rng.multinomial(draws, share))
        products = np.empty(users.size, dtype=np.int64)
        from_favourite = rng.random(users.size) < 0.7
        rows = np.flatnonzero(~from_favourite)
        products[rows] = np.searchsorted(global_cdf, rng.random(rows.size) * global_cdf[-1]).clip(
            max=n_products - 1
        )
        rows = np.flatnonzero(from_favourite)
        aisle = favourites[users[rows], rng.integers(0, 3, rows.size)]
        for a in range(n_aisles):
            hit = rows[aisle == a]
            if hit.size and by_aisle[a].size:
                position = np.searchsorted(aisle_cdf[a], rng.random(hit.size) * aisle_cdf[a][-1])
                products[hit] = by_aisle[a][position.clip(max=by_aisle[a].size - 1)]
            elif hit.size:
                products[hit] = rng.integers(0, n_products, hit.size)
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * n_products + products]))
        del users, products
        if keys.size >= n_edges:
            break
        draws = int((n_edges - keys.size) * 1.5) + 1000
    keys = np.sort(rng.choice(keys, n_edges, replace=False)) if keys.size > n_edges else keys
    edge_user, edge_product = keys // n_products, keys % n_products
    weight = rng.geometric(0.5, keys.size).astype(np.float32)
    items = np.bincount(edge_user, weights=weight, minlength=n_users)
    orders = np.maximum(4, np.round(items / 10)).astype(np.float32)
    return BipartiteGraph(
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        product_ids=np.arange(1, n_products + 1, dtype=np.int64),
        edge_user=edge_user,
        edge_product=edge_product,
        edge_weight=weight,
        user_orders=orders,
        user_days_between=rng.uniform(3, 30, n_users).astype(np.float32),
        product_aisle_ids=product_aisle + 1,
        product_department_ids=product_aisle % n_departments + 1,
    )
