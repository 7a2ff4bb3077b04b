"""Packaging: PEP 621 metadata in pyproject.toml, the extras, and the `serve` extra being enough to serve.

The serving check runs the serving package in a fresh interpreter that refuses to import anything but
the standard library, instarec itself and the distributions the `serve` extra brings (with their own
requirements): every serving module imports, and the Lambda handler and the ASGI app answer a request
from a real SQLite store. The wheel is built from a copy of the tracked files, and its build log must
hold no setuptools warning.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from instarec_assets.backends.serving_store import ROW_SCHEMA
from instarec_assets.backends.sqlite_store import SqliteRecommendationStore

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _load_lambda_requirements_script():
    spec = importlib.util.spec_from_file_location(
        "lambda_requirements", REPO / "infra" / "scripts" / "lambda_requirements.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_metadata_lives_in_pyproject_and_setup_py_is_a_shim() -> None:
    assert PROJECT["name"] == "instarec"
    assert PROJECT["requires-python"] == ">=3.11"
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["scripts"] == {"instarec": "instarec_assets.cli:main"}
    assert set(EXTRAS) == {"aws", "graph", "serve", "dev", "spark"}

    tree = ast.parse((REPO / "setup.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert len(calls) == 1 and ast.unparse(calls[0]) == "setup()", "setup.py must stay `setup()` alone"


def test_each_platform_gets_one_xgboost_build() -> None:
    """xgboost-cpu has no macOS wheels, so macOS installs the full xgboost and Linux the CPU build."""
    requirements = [Requirement(text) for text in PROJECT["dependencies"]]
    xgboost = [req for req in requirements if _normalise(req.name).startswith("xgboost")]

    def chosen(platform: str) -> list[str]:
        environment = {"sys_platform": platform}
        return [req.name for req in xgboost if req.marker is None or req.marker.evaluate(environment)]

    assert chosen("linux") == ["xgboost-cpu"]
    assert chosen("darwin") == ["xgboost"]
    assert Marker("sys_platform == 'darwin'").evaluate({"sys_platform": "darwin"})


def test_extras_hold_what_their_names_promise() -> None:
    names = {extra: {_normalise(Requirement(text).name) for text in reqs} for extra, reqs in EXTRAS.items()}
    assert names["graph"] == {"torch", "torch-geometric"}
    assert {"s3fs", "dagster-aws", "dagster-postgres"} <= names["aws"]
    assert names["spark"] == {"pyspark", "sqlglot", "dagster-pipes"}
    assert {"pytest", "moto", "ruff", "import-linter", "dagster-dg-cli"} <= names["dev"]
    # Serving must not pull in the pipeline.
    heavy = {"dagster", "torch", "torch-geometric", "pandas", "numpy", "pyarrow", "duckdb", "xgboost-cpu"}
    assert not names["serve"] & heavy
    base = {_normalise(Requirement(text).name) for text in PROJECT["dependencies"]}
    assert not base & {"torch", "torch-geometric", "s3fs", "pyspark", "pytest"}


def _closure(requirements: list[str]) -> set[str]:
    """The installed distributions these requirements bring, following each one's own requirements."""
    seen: set[str] = set()
    pending = [(Requirement(text), frozenset()) for text in requirements]
    while pending:
        requirement, _ = pending.pop()
        name = _normalise(requirement.name)
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional requirement not installed here cannot be imported either
        seen.add(name)
        for text in dist.requires or []:
            child = Requirement(text)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                pending.append((child, frozenset()))
    return seen


SERVE_RUN = r"""
import importlib, importlib.abc, json, pkgutil, sys

allowed = set(json.loads(sys.argv[1]))
refused = []

class OnlyServe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in allowed or top == "instarec_assets":
            return None
        refused.append(top)
        raise ModuleNotFoundError(f"{top} is not in the serve extra", name=top)

sys.meta_path.insert(0, OnlyServe())
import instarec_assets.serving as serving
modules = sorted(  # __main__ would start the server
    m.name for m in pkgutil.walk_packages(serving.__path__, "instarec_assets.serving.") if m.name != "instarec_assets.serving.__main__"
)
for module in modules:
    importlib.import_module(module)
importlib.import_module("instarec_assets.backends.serving_store")  # the store the API opens on first use

event = {
    "httpMethod": "GET", "path": "/recommendations",
    "queryStringParameters": {"user_id": "7", "k": "2"},
    "multiValueQueryStringParameters": {"user_id": ["7"], "k": ["2"]},
    "headers": {"x-api-key": "serve-key"}, "multiValueHeaders": {"x-api-key": ["serve-key"]},
    "requestContext": {"identity": {"sourceIp": "10.0.0.1"}},
}
response = serving.lambda_handler(event, None)

from instarec_assets.serving.asgi import create_app
import asyncio
sent = []
async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}
async def send(message):
    sent.append(message)
scope = {"type": "http", "method": "GET", "path": "/recommendations", "query_string": b"user_id=7&k=1",
         "headers": [(b"x-api-key", b"serve-key")], "client": ("127.0.0.1", 5000), "scheme": "http",
         "http_version": "1.1", "root_path": "", "raw_path": b"/recommendations", "server": ("127.0.0.1", 8080)}
asyncio.run(create_app()(scope, receive, send))
asgi_body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
print(json.dumps({"modules": modules, "refused": sorted(set(refused)), "lambda": [response["statusCode"],
      json.loads(response["body"])], "asgi": asgi_body}))
"""


def test_serve_extra_is_enough_for_the_serving_package_and_the_lambda_handler(tmp_path: Path) -> None:
    distributions = _closure(EXTRAS["serve"])
    assert {"boto3", "uvicorn"} <= distributions
    tops = {
        top
        for top, dists in importlib.metadata.packages_distributions().items()
        if any(_normalise(dist) in distributions for dist in dists)
    }

    home = tmp_path / "home"
    store_path = home / "serving" / "recommendations.sqlite"
    store_path.parent.mkdir(parents=True)
    rows = [
        {
            "user_id": 7,
            "rank": rank,
            "product_id": 100 + rank,
            "product_name": f"Product {rank}",
            "aisle": "fresh fruits",
            "department": "produce",
            "probability": 0.9 - rank / 10,
            "explore": False,
            "model_version": "serve-extra",
        }
        for rank in (1, 2, 3)
    ]
    with SqliteRecommendationStore(str(store_path)) as store:
        store.load(
            pa.Table.from_pylist(rows, schema=ROW_SCHEMA), model_version="serve-extra", batch="2025-01-06"
        )

    env = {"INSTAREC_HOME": str(home), "INSTAREC_API_KEYS": "serve-key", "PYTHONPATH": str(REPO)}
    bootstrap = f"import sys; sys.path.insert(0, {str(REPO)!r}); exec({SERVE_RUN!r})"
    run = subprocess.run(
        [sys.executable, "-I", "-c", bootstrap, json.dumps(sorted(tops))],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert "instarec_assets.serving.lambda_function" in report["modules"]
    assert "instarec_assets.serving.guarded_http" in report["modules"]  # imports uvicorn
    status, body = report["lambda"]
    assert status == 200, body
    assert [item["product_id"] for item in body["recommendations"]] == [101, 102]
    assert body["model_version"] == "serve-extra"
    assert [item["product_id"] for item in report["asgi"]["recommendations"]] == [101]


WITHOUT_GRAPH = r"""
import importlib.abc, sys

class NoGraphExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torch_geometric"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoGraphExtra())
from instarec_assets.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_generator_needs_no_graph_extra(tmp_path: Path) -> None:
    out = tmp_path / "landing"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_GRAPH,
            "generate",
            "--out",
            str(out),
            "--users",
            "100",
            "--batches",
            "1",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (batch,) = out.iterdir()
    assert (batch / "_SUCCESS").exists() and (batch / "orders.csv").stat().st_size > 0


def test_lambda_bundle_takes_the_serve_extra_less_the_runtime_and_the_server() -> None:
    script = _load_lambda_requirements_script()
    # boto3 is in the Lambda runtime and uvicorn only runs `instarec serve`: PyJWT (shopper tokens) is left.
    assert script.lambda_requirements(PYPROJECT) == ["PyJWT[crypto]>=2.8"]
    # A library the handler needs, added to the extra, goes into the zip with its version bound.
    grown = json.loads(json.dumps(PYPROJECT))
    grown["project"]["optional-dependencies"]["serve"].append("orjson>=3.10")
    assert script.lambda_requirements(grown) == ["PyJWT[crypto]>=2.8", "orjson>=3.10"]
    assert script.distribution_name("uvicorn[standard]>=0.30") == "uvicorn"
    assert script.distribution_name("Zope.Interface ; python_version<'4'") == "zope-interface"


@pytest.mark.slow
def test_wheel_builds_without_setuptools_warnings_and_holds_the_data_files(tmp_path: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    source = tmp_path / "src"
    for name in filter(None, tracked):
        if (REPO / name).is_file():  # a file deleted in the working tree stays listed until committed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(tmp_path / "dist"),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-3000:]
    warnings = [
        line.strip()
        for line in log.splitlines()
        if re.search(r"warn", line, re.IGNORECASE)
        and "byte-compiling is disabled" not in line  # pip's PYTHONDONTWRITEBYTECODE, not the config
        and "Location 'file:" not in line  # a missing local index folder on this machine
    ]
    assert warnings == []
    (wheel,) = (tmp_path / "dist").glob("instarec-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for data in (
        "instarec_assets/generate/data/products.csv.gz",
        "instarec_assets/generate/data/aisles.csv",
        "instarec_assets/serving/static/index.html",
        "instarec_assets/serving/openapi.yaml",
    ):
        assert data in names, data
    assert not [name for name in names if name.startswith("instarec_assets_tests/")]
    assert "Provides-Extra: serve" in metadata
    assert 'Requires-Dist: xgboost>=2.1; sys_platform == "darwin"' in metadata
