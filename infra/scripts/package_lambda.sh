#!/usr/bin/env bash
# Build the serving Lambda zip: the instarec_assets package without its pipeline dependencies, plus the
# `serve` extra of pyproject.toml built for the Lambda platform, less what the Lambda never needs
# ([tool.instarec.lambda] runtime-provided: boto3 comes with the python3.11 runtime; server-only:
# uvicorn runs `instarec serve`, never the Lambda). Prints the zip's path.
#
#   infra/scripts/package_lambda.sh [OUT_DIR]        (default build/lambda)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/build/lambda}"
PYTHON="${PYTHON:-python3}"
PKG="$OUT/package"
ZIP="$OUT/instarec-serving.zip"

rm -rf "$OUT"
mkdir -p "$PKG"

# pip builds the project in place: a stale build/lib (modules since deleted or moved) must not reach the zip.
rm -rf "$ROOT/build/lib"
"$PYTHON" -m pip install --quiet --no-deps --no-compile --target "$PKG" "$ROOT"
REQS="$OUT/lambda-requirements.txt"
"$PYTHON" "$ROOT/infra/scripts/lambda_requirements.py" "$ROOT/pyproject.toml" > "$REQS"
if grep -qvE '^\s*(#|$)' "$REQS"; then
  "$PYTHON" -m pip install --quiet --no-compile --target "$PKG" \
    --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 --only-binary=:all: \
    -r "$REQS"
fi
rm -rf "$PKG/bin"  # console scripts: the Lambda calls the handler, never the CLI
find "$PKG" -type d \( -name __pycache__ -o -name '*.dist-info' -o -name tests \) -prune -exec rm -rf {} +

# The handler must import with only the Lambda runtime's libraries (the standard library and boto3).
SMOKE="$OUT/smoke-venv"
"$PYTHON" -m venv "$SMOKE"
"$SMOKE/bin/pip" install --quiet boto3
(cd "$OUT" && PYTHONPATH="$PKG" "$SMOKE/bin/python" - <<'PY'
import importlib
module = importlib.import_module("instarec_assets.serving")
assert callable(getattr(module, "lambda_handler", None)), "instarec_assets.serving.lambda_handler is missing"
print("serving handler imports with the Lambda runtime's libraries")
PY
)
rm -rf "$SMOKE"

# Deterministic archive: fixed timestamps and sorted entries, so an unchanged build has the same hash.
(cd "$PKG" && find . -exec touch -h -d '2020-01-01T00:00:00Z' {} + \
  && find . -type f | LC_ALL=C sort | zip -q -X -@ "$ZIP")
echo "$ZIP"
