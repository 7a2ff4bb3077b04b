#!/bin/sh
# DAGSTER_HOME and /tmp are writable task volumes (the root filesystem is read-only on ECS), so the
# instance configuration baked into the image is copied in before Dagster starts.
set -eu
mkdir -p "$DAGSTER_HOME" /tmp/matplotlib /tmp/dagster-compute-logs
cp /opt/dagster/config/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
exec "$@"
