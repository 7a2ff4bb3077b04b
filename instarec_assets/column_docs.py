"""What each column of each lake table means: the descriptions in the UI's column schema.

The IO manager attaches `column_description(table, column)` to every column of the
`dagster/column_schema` it records. A table's own entry wins over the shared entries, so a column
that means something particular in one table (`eval_set` of an order line) says so there.
Feature columns take their definitions from `features.columns`, where the model card reads them.
instarec_assets_tests/test_column_docs.py checks that every column of every table of a generated
lake has a description here.
"""

from __future__ import annotations

from instarec_assets.features.columns import FEATURES
from instarec_assets.lake.schemas import LANDING_FILES

# Columns that mean the same in every table that has them.
SHARED: dict[str, str] = {
    "order_id": "Instacart order id",
    "user_id": "Instacart user (shopper) id",
    "product_id": "Instacart product id",
    "aisle_id": "aisle id (aisles.csv)",
    "department_id": "department id (departments.csv)",
    "aisle": "aisle name",
    "department": "department name",
    "product_name": "product name (trimmed, NFC-normalised, inner whitespace collapsed)",
    "eval_set": "the order's role in the Kaggle files: prior, train or test",
    "order_number": "the order's sequence number for its user (1 = first order)",
    "order_dow": "day of week the order was placed (0-6)",
    "order_hour_of_day": "hour of day the order was placed (0-23)",
    "days_since_prior_order": "days since the user's previous order, capped at 30; empty on first orders",
    "add_to_cart_order": "position of the line in the basket (1 = added first)",
    "reordered": "1 when the user had bought the product before, else 0",
    "_source_file": "landed file the row came from",
    "_source_row": "1-based record number in the landed file",
    "_ingested_at": "when the row was ingested into the raw zone (UTC)",
    "_parse_error": "why the CSV reader could not split the line (empty for a well-formed record)",
    "_raw_line": "the line as landed, kept when it could not be parsed",
    "framing": "'target' (history before each user's target order: training and Kaggle test rows), "
    "'serving' (every order, for the next basket) or, in the feature tables, 'earlier' (history before "
    "the order preceding the target: extra training targets)",
    "rank": "position in the list (1 = first)",
    "probability": "predicted probability that the user buys the product in the next order",
    **FEATURES,
}

RAW_TEXT = "as landed, text"
QUARANTINE: dict[str, str] = {
    "source_file": "landed file of the rejected record",
    "source_row": "1-based record number in that file",
    "reason": "why the record was quarantined (bad value, duplicate conflict, unknown key, ...)",
    "record": "the rejected record as landed (JSON of its fields, or the raw line)",
    "ingested_at": "when the record was ingested (UTC)",
}
CATALOG_UPDATED = "landing batch whose extract last changed the row (latest name wins)"

# table -> column -> description, where a table's column says more than (or differs from) SHARED.
TABLES: dict[str, dict[str, str]] = {
    **{
        f"raw_{table}": {column: f"{SHARED.get(column, column)} ({RAW_TEXT})" for column in spec.columns}
        for table, spec in LANDING_FILES.items()
    },
    "clean_orders": {},
    "clean_order_products": {
        "eval_set": "the file the line came from: prior (order_products__prior) or train (order_products__train)",
    },
    "clean_products": {
        "valid_from": "landing batch from which this version of the product is valid",
        "valid_to": "landing batch from which a later version replaced it (empty while current)",
        "is_current": "whether this is the product's current version",
    },
    "clean_aisles": {"updated_on": CATALOG_UPDATED},
    "clean_departments": {"updated_on": CATALOG_UPDATED},
    **{
        f"quarantined_{table}": QUARANTINE
        for table in ("orders", "order_products", "products", "aisles", "departments")
    },
    "user_features": {
        "target_order_id": "the order being predicted (target and earlier framings); empty for serving",
        "target_set": "eval_set of the target order (train or test; empty for serving, the next order)",
    },
    "product_features": {},
    "user_product_features": {},
    "training_set": {
        "eval_set": "train: the user's last order, when its lines are known; train_earlier: the order "
        "before it, an extra training target for a short history (never used to validate)",
        "label": "1 when the product is in the user's target order, else 0",
    },
    "inference_set": {
        "eval_set": "test (Kaggle test orders, target framing) or serving (the next order)",
        "label": "empty: the target order's lines are unknown",
    },
    "affected_users": {
        "reason": "why the batch changed the user's feature rows: new order or line, moved product, "
        "fallback gap, or full build",
    },
    "user_embeddings": {
        "edges": "the user's distinct products in this batch's graph",
        "training_edges": "the user's degree in the graph the model was trained on (0: embedded inductively)",
        "embedding": "GraphSAGE embedding of the user (float vector)",
    },
    "product_embeddings": {
        "edges": "the product's distinct buyers in this batch's graph",
        "training_edges": "the product's degree in the graph the model was trained on (0: embedded inductively)",
        "embedding": "GraphSAGE embedding of the product (float vector)",
    },
    "reorder_predictions": {
        "eval_set": "test (Kaggle test orders) or serving (the next order)",
        "order_id": "the Kaggle test order predicted (empty for serving rows)",
    },
    "next_basket": {
        "order_id": "the Kaggle test order",
        "products": "the predicted basket: space-separated product ids, or None",
        "n_products": "products in the predicted basket",
        "include_none": "whether the basket includes 'None' (an empty reorder basket)",
        "expected_f1": "the basket's expected F1 under the predicted probabilities",
    },
    "recommendations": {
        "rank": "position in the user's list (1-10 the top list, later ranks explore items)",
        "explore": "an explore item: a product new to this shopper, a co-purchase neighbour of what they buy",
        "source": "the row's tier: model (a scored reorder candidate), explore, or popular (cold start)",
        "model_version": "the XGBoost model version that scored the list",
    },
    "ranking_report": {
        "method": "what is ranked: the served lists, XGBoost or GraphSAGE alone, or a baseline",
        "users": "held-out users the method is scored on (a user with no list counts as all misses)",
        **{
            f"{metric}@{k}": f"{meaning}, top {k}, averaged over the held-out users"
            for k in (3, 10)
            for metric, meaning in (
                ("precision", "share of the recommended items that are in the next order"),
                ("recall", "share of the whole next order that is recommended"),
                ("ndcg", "normalised discounted cumulative gain"),
                ("hit_rate", "1 when any recommended item is in the next order"),
            )
        },
        "map@10": "mean average precision of the top 10",
        "coverage": "distinct products recommended / current catalogue",
        "repeat_share": "share of the top-10 items the user bought before",
        "explore_share": "share of the top-10 items that are explore items",
        "explore_hit_rate": "users with a top-10 explore item in their next order / users shown one",
        "batch": "the landing batch (partition) the report is for",
        "model_version": "the XGBoost model version the served lists came from",
    },
    "similar_items": {
        "product_id": "the product the list is for",
        "rank": "position in its list (1 = most similar)",
        "similar_product_id": "a product often bought in the same basket, or close in the embeddings",
        "product_name": "the similar product's name",
        "aisle": "the similar product's aisle",
        "department": "the similar product's department",
        "score": "(1 - w) x cooccurrence + w x similarity, w chosen on held-out baskets (0: co-occurrence alone)",
        "lift": "raw lift of the pair (shown beside the score; not used to rank; 0 without shared baskets)",
        "together": "baskets that contained both products (0: an embedding neighbour filling the list)",
        "cooccurrence": "together / sqrt(baskets of each): the cosine of their basket vectors",
        "similarity": "cosine of the two products' GraphSAGE embeddings (serving framing), clipped at 0",
    },
    "similar_item_counts": {
        "kind": "strong (a pair with at least the minimum support), weak (below it) or popularity (a product)",
        "product_id": "the pair's smaller product id, or the product a popularity row counts",
        "other_id": "the pair's larger product id (0 on a popularity row)",
        "together": "cumulative baskets holding both products (a popularity row: baskets holding the product)",
    },
}


def column_description(table: str, column: str) -> str | None:
    """The column's description in this table, else its shared one; None when neither exists."""
    return TABLES.get(table, {}).get(column) or SHARED.get(column)
