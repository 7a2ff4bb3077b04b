"""Print the requirements the serving Lambda's zip must carry: the `serve` extra of pyproject.toml less
the distributions named in [tool.instarec.lambda] (those the python3.11 runtime provides and those
only `instarec serve` uses). One requirement per line; nothing when the runtime has all it needs.

    python infra/scripts/lambda_requirements.py pyproject.toml
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def distribution_name(requirement: str) -> str:
    """The PEP 503 normalised name a requirement string starts with (`uvicorn[standard]>=0.30` -> `uvicorn`)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def lambda_requirements(pyproject: dict) -> list[str]:
    serve = pyproject["project"]["optional-dependencies"]["serve"]
    lambda_config = pyproject.get("tool", {}).get("instarec", {}).get("lambda", {})
    left_out = {
        distribution_name(name)
        for key in ("runtime-provided", "server-only")
        for name in lambda_config.get(key, [])
    }
    return [requirement for requirement in serve if distribution_name(requirement) not in left_out]


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "pyproject.toml")
    with path.open("rb") as handle:
        pyproject = tomllib.load(handle)
    for requirement in lambda_requirements(pyproject):
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
