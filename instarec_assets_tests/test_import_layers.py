"""The import direction, assets -> logic -> libraries, as the import-linter contracts in pyproject.toml state it.

Each contract runs on its own through `lint-imports`, so a broken one names itself and its import chains
in the failure. The other tests keep the contracts whole: every module at the package root sits in a
layer, the logic layer and the Dagster-free list name the same packages, and every installed dagster*
package is forbidden. Importing `instarec_assets.serving` without numpy, pyarrow, pandas or Dagster is
checked at run time by test_serving_api.py and test_lambda_package.py, since import-linter cannot tell a
module-level import from one inside a function.
"""

from __future__ import annotations

import importlib.metadata
import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import instarec_assets

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = REPO_ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

CONFIG = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
CONTRACTS = {contract["id"]: contract for contract in CONFIG["contracts"]}


def _layer_names(layer: str) -> set[str]:
    """The module tails in one layer string, "a : b | (c)" -> {"a", "b", "c"}."""
    return {name.strip().strip("()") for name in layer.replace("|", ":").split(":") if name.strip()}


DAGSTER_LAYER, LOGIC_LAYER = (_layer_names(layer) for layer in CONTRACTS["layers"]["layers"])


@pytest.mark.parametrize("contract_id", sorted(CONTRACTS))
def test_contract_is_kept(contract_id: str) -> None:
    assert LINT_IMPORTS.is_file(), (
        f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [str(LINT_IMPORTS), str(PYPROJECT), "--contract", contract_id, "--no-cache", "--no-logo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"import-linter contract {contract_id!r} is broken:\n{report}"
    assert "1 kept, 0 broken" in report, report


def test_every_module_at_the_package_root_is_in_a_layer() -> None:
    """A new module beside definitions.py must be declared Dagster-facing or logic in pyproject.toml."""
    root = {module.name for module in pkgutil.iter_modules(instarec_assets.__path__)}
    assert Path(instarec_assets.__file__).parent == REPO_ROOT / "instarec_assets"
    unplaced = root - DAGSTER_LAYER - LOGIC_LAYER
    assert not unplaced, f"add {sorted(unplaced)} to a layer of the 'layers' contract in pyproject.toml"
    assert not DAGSTER_LAYER & LOGIC_LAYER


def test_the_dagster_free_packages_are_the_logic_layer() -> None:
    root = {module.name for module in pkgutil.iter_modules(instarec_assets.__path__)}
    sources = {
        name.removeprefix("instarec_assets.") for name in CONTRACTS["logic-without-dagster"]["source_modules"]
    }
    assert sources == LOGIC_LAYER & root


def test_every_installed_dagster_package_is_forbidden_to_the_logic() -> None:
    installed = {name for name in importlib.metadata.packages_distributions() if name.startswith("dagster")}
    assert "dagster" in installed
    missing = installed - set(CONTRACTS["logic-without-dagster"]["forbidden_modules"])
    assert not missing, (
        f"add {sorted(missing)} to forbidden_modules of 'logic-without-dagster' in pyproject.toml"
    )
