"""The serving Lambda's zip, built by infra/scripts/package_lambda.sh as the deploy workflow does.

The script installs this package without its dependencies and checks, in a fresh venv holding only
boto3, that the handler imports. Here the zip's contents are checked too, and the handler inside it
answers a request against the local SQLite store with the heavy libraries made unimportable.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from instarec_assets.backends.serving_store import ROW_SCHEMA
from instarec_assets.backends.sqlite_store import SqliteRecommendationStore

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "scripts" / "package_lambda.sh"

pytestmark = pytest.mark.slow

HANDLER_RUN = """
import importlib.abc, json, sys

BLOCKED = {"numpy", "pyarrow", "pandas", "dagster", "duckdb", "uvicorn", "torch", "xgboost", "s3fs"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the Lambda runtime")
        return None

sys.meta_path.insert(0, Block())
import instarec_assets.serving as serving
assert serving.__file__.startswith(sys.argv[1]), serving.__file__
event = {
    "httpMethod": "GET",
    "path": "/recommendations",
    "queryStringParameters": {"user_id": "7", "k": "2"},
    "multiValueQueryStringParameters": {"user_id": ["7"], "k": ["2"]},
    "headers": {"x-api-key": "zip-key"},
    "multiValueHeaders": {"x-api-key": ["zip-key"]},
    "requestContext": {"identity": {"sourceIp": "10.0.0.1"}},
}
response = serving.lambda_handler(event, None)
# a shopper's route: PyJWT and cryptography from the zip check the token (here refused: alg none)
unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJjdXN0b206aW5zdGFyZWNfdXNlcl9pZCI6IjcifQ."
me = dict(event, path="/me/recommendations", queryStringParameters=None, multiValueQueryStringParameters=None,
          headers={"authorization": "Bearer " + unsigned}, multiValueHeaders=None)
refused = serving.lambda_handler(me, None)
import jwt, cryptography
assert jwt.__file__.startswith(sys.argv[1]) and cryptography.__file__.startswith(sys.argv[1])
print(json.dumps([response["statusCode"], json.loads(response["body"]), refused["statusCode"],
                  json.loads(refused["body"])]))
"""


def _recommendation_rows(user_id: int) -> pa.Table:
    rows = [
        {
            "user_id": user_id,
            "rank": rank,
            "product_id": 100 + rank,
            "product_name": f"Product {rank}",
            "aisle": "fresh fruits",
            "department": "produce",
            "probability": 0.9 - rank / 10,
            "explore": False,
            "model_version": "zip-test",
        }
        for rank in (1, 2, 3)
    ]
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def test_zip_holds_the_handler_without_heavy_libraries_and_serves(tmp_path: Path) -> None:
    out = tmp_path / "lambda"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serving handler imports with the Lambda runtime's libraries" in proc.stdout
    archive = Path(proc.stdout.strip().splitlines()[-1])
    assert archive == out / "instarec-serving.zip"

    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        assert "instarec_assets/serving/lambda_function.py" in names
        assert "instarec_assets/serving/static/index.html" in names
        tops = {name.split("/")[0] for name in names}
        # the package and the `serve` extra's PyJWT[crypto] (shopper tokens) with its closure
        expected = {"instarec_assets", "jwt", "cryptography", "cffi", "pycparser"}
        tops = {top for top in tops if not top.startswith("_cffi_backend.")}
        assert tops == expected, f"unexpected top-level entries in the zip: {sorted(tops)}"
        assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
        unpacked = tmp_path / "unpacked"
        bundle.extractall(unpacked)

    home = tmp_path / "home"
    store_path = home / "serving" / "recommendations.sqlite"
    store_path.parent.mkdir(parents=True)
    with SqliteRecommendationStore(str(store_path)) as store:
        store.load(_recommendation_rows(7), model_version="zip-test", batch="2025-01-06")

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("INSTAREC_", "AWS_", "PYTHONPATH"))
    }
    env.update({"INSTAREC_HOME": str(home), "INSTAREC_API_KEYS": "zip-key", "PYTHONPATH": str(unpacked)})
    bootstrap = f"import sys; sys.path.insert(0, {str(unpacked)!r}); exec({HANDLER_RUN!r})"
    run = subprocess.run(
        [sys.executable, "-I", "-c", bootstrap, str(unpacked)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    status, body, token_status, token_body = json.loads(run.stdout.strip().splitlines()[-1])
    assert (token_status, token_body) == (
        401,
        {"error": "invalid bearer token: algorithm none is not accepted"},
    )
    assert status == 200, body
    assert body["user_id"] == 7 and body["model_version"] == "zip-test"
    assert [item["product_id"] for item in body["recommendations"]] == [101, 102]
