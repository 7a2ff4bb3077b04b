"""The code location as it was before step processes were preloaded: every step a spawned interpreter.

Only for bench_run_paths.py's baseline: `dagster job execute -f bench/run_paths_spawn.py -a defs`.
"""

from dagster import multiprocess_executor

import instarec_assets.definitions as definitions
from instarec_assets.lake.locations import LakeLocations

definitions.STEP_EXECUTOR = multiprocess_executor.configured(
    {"start_method": {"spawn": {}}}, name="multiprocess_spawn"
)
defs = definitions.build_definitions(LakeLocations.from_env())
