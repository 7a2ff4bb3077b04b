"""instarec: a Dagster lakehouse from Instacart-format order history to product recommendations.

`defs` is the code location loaded by `dagster dev` (workspace.yaml); INSTAREC_ENV picks local or aws.
"""

from instarec_assets.definitions import build_definitions
from instarec_assets.lake.locations import LakeLocations

defs = build_definitions(LakeLocations.from_env())
