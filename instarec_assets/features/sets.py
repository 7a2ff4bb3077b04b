"""training_set and inference_set: candidates joined with every feature level.

Candidates are the (user, product) pairs of a framing's history (feat_up, read back from the staged
user_product_features file). Only the label reads the target order's lines. Row order carries no
meaning and there is no ORDER BY: sorting ~20M wide rows would cost more than building them.
"""

from __future__ import annotations

from instarec_assets.features.columns import FEATURE_COLUMNS
from instarec_assets.features.targets import EARLIER_EVAL_SET, EARLIER_TARGET_MAX_HISTORY
from instarec_assets.lake.staging import StagedLocation

SET_SELECT = """
SELECT up.user_id, up.product_id, {order_id} AS order_id, {eval_set} AS eval_set, {label} AS label,
       {features}
FROM read_parquet('{user_product_path}', hive_partitioning = false) AS up
JOIN feat_frames AS f USING (framing, user_id)
JOIN feat_user AS u USING (framing, user_id)
JOIN feat_product AS p USING (framing, product_id)
{label_join}
WHERE {where}
"""


def training_select(user_product_path: StagedLocation) -> str:
    """Candidates of users whose target is `train` (eval_set `train`), and of the earlier framing for
    users with a short history (eval_set `train_earlier`); label 1 when the target order holds the
    product."""
    return SET_SELECT.format(
        order_id="f.target_order_id",
        eval_set=f"CASE up.framing WHEN 'earlier' THEN '{EARLIER_EVAL_SET}' ELSE 'train' END",
        label="(t.product_id IS NOT NULL)::TINYINT",
        features=", ".join(FEATURE_COLUMNS),
        user_product_path=_literal(user_product_path),
        label_join="LEFT JOIN feat_target_lines AS t ON t.order_id = f.target_order_id"
        " AND t.product_id = up.product_id",
        where="(up.framing = 'target' AND f.target_set = 'train')"
        f" OR (up.framing = 'earlier' AND u.u_orders <= {EARLIER_TARGET_MAX_HISTORY})",
    )


def inference_select(user_product_path: StagedLocation) -> str:
    """`test` rows (the Kaggle submission: the target is a test order) and `serving` rows (next orders)."""
    return SET_SELECT.format(
        order_id="f.target_order_id",
        eval_set="CASE up.framing WHEN 'target' THEN 'test' ELSE 'serving' END",
        label="NULL::TINYINT",
        features=", ".join(FEATURE_COLUMNS),
        user_product_path=_literal(user_product_path),
        label_join="",
        where="(up.framing = 'target' AND f.target_set = 'test') OR up.framing = 'serving'",
    )


def _literal(path: StagedLocation) -> str:
    return str(path).replace("'", "''")
