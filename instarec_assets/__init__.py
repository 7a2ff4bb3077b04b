"""instarec: a Dagster lakehouse from Instacart-format order history to product recommendations.

`defs` is the code location loaded by `dagster dev` (workspace.yaml); INSTAREC_ENV picks local or aws.
It is built on first access, so Dagster-free parts of the package (the lake logic, the generator,
the serving handler packaged for Lambda) import without loading Dagster.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from instarec_assets.definitions import build_definitions
        from instarec_assets.lake.locations import LakeLocations

        definitions = build_definitions(LakeLocations.from_env())
        globals()["defs"] = definitions
        return definitions
    raise AttributeError(f"module 'instarec_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "defs"})
