#!/usr/bin/env bash
# Build the Spark job's Python environment for EMR Serverless (its Amazon Linux 2023 workers run
# Python 3.9; instarec needs 3.11): EMR's documented recipe for another Python version. Python is
# built from source into a venv made with --copies, its standard library copied in, and the venv
# packed with venv-pack for `spark.archives=<archive>#environment`. The venv holds instarec without
# its base dependencies (the job imports only the lake logic) plus the `spark` extra less pyspark,
# which EMR provides, DuckDB, which the lake modules import, and pandas and pyarrow, which the
# job's pandas UDFs (nfc_normalize, json_valid) run on in the driver and the executors. Runs inside the Amazon Linux 2023
# container (infra/scripts/deploy.sh, step spark-job):
#
#   docker run --rm --platform linux/amd64 -v "$PWD:/src:ro" -v "$OUT:/out" \
#     public.ecr.aws/amazonlinux/amazonlinux:2023 /src/infra/scripts/package_spark_env.sh /out
set -euo pipefail

OUT="${1:?usage: package_spark_env.sh OUTPUT_DIR}"
SRC="${SRC:-/src}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11.11}"
ARCHIVE="instarec-spark-env.tar.gz"  # instarec_assets/lake/emr_serverless.py ENVIRONMENT_ARCHIVE

dnf install -y -q gcc make tar gzip findutils openssl-devel bzip2-devel libffi-devel zlib-devel \
  xz-devel sqlite-devel
curl -fsSL "https://www.python.org/ftp/python/$PYTHON_VERSION/Python-$PYTHON_VERSION.tgz" | tar xz -C /tmp
(cd "/tmp/Python-$PYTHON_VERSION" && ./configure --prefix=/opt/python --quiet \
  && make -j"$(nproc)" --quiet && make install --quiet >/dev/null)

/opt/python/bin/python3.11 -m venv --copies /opt/venv
cp -r /opt/python/lib/python3.11/* /opt/venv/lib/python3.11/
PY=/opt/venv/bin/python
"$PY" -m pip install --quiet --upgrade pip

# pip builds the project in place; the source is mounted read-only.
mkdir -p /tmp/instarec
cp -r "$SRC/pyproject.toml" "$SRC/setup.py" "$SRC/LICENSE" "$SRC/instarec_assets" /tmp/instarec/
"$PY" -m pip install --quiet --no-deps /tmp/instarec
"$PY" - /tmp/instarec/pyproject.toml > /tmp/spark-requirements.txt <<'PYEOF'
import re, sys, tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
name = lambda spec: re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower()
wanted = [s for s in project["optional-dependencies"]["spark"] if name(s) != "pyspark"]
wanted += [s for s in project["dependencies"] if name(s) in ("duckdb", "pandas", "pyarrow")]
print("\n".join(wanted))
PYEOF
"$PY" -m pip install --quiet -r /tmp/spark-requirements.txt venv-pack==0.2.0
"$PY" -c "import duckdb, pandas, pyarrow, sqlglot, dagster_pipes, instarec_assets.lake.clean_steps, instarec_assets.features.full_build"

mkdir -p "$OUT"
/opt/venv/bin/venv-pack -p /opt/venv -o "$OUT/$ARCHIVE" --python-prefix /home/hadoop/environment --force
echo "$OUT/$ARCHIVE"
