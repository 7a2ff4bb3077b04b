"""The curated zone's feature sets (Kaggle Instacart framing), Dagster-free, in DuckDB.

`build_features` turns a clean snapshot into user, product and user x product feature tables, the
labelled `training_set` (users whose latest order is a known `train` order) and the `inference_set`
(`test` rows for users whose latest order's lines are unknown, `serving` rows for every user's next
order). `update_features` gives the same tables for a new batch from the previous batch's, recomputing
only the users and products the batch touches. See `columns.FEATURES` for the definitions and
`columns.NULLABLE_FEATURES` for NaN semantics.
"""

from instarec_assets.features.build import FeatureTables, build_features
from instarec_assets.features.columns import FEATURE_COLUMNS, FEATURES, NULLABLE_FEATURES
from instarec_assets.features.incremental import IncrementalResult, PreviousFeatures, update_features
from instarec_assets.features.snapshot import CleanSnapshot
from instarec_assets.features.summary import feature_summary

__all__ = [
    "FEATURES",
    "FEATURE_COLUMNS",
    "NULLABLE_FEATURES",
    "CleanSnapshot",
    "FeatureTables",
    "IncrementalResult",
    "PreviousFeatures",
    "build_features",
    "feature_summary",
    "update_features",
]
