# instarec: one entry point for users and CI. Every target creates what it needs.
PYTHON ?= python3
VENV := .venv
TOOLS_VENV := .venv-tools
BIN := $(VENV)/bin
INSTAREC_HOME ?= $(CURDIR)/.instarec
DEMO_DATA := $(INSTAREC_HOME)/demo-data
DEMO_USERS ?= 300
PYTEST_ARGS ?=
SERVE_ARGS ?=

export INSTAREC_HOME

.PHONY: install tools test lint format defs demo ui serve bench bench-serving clean

# Idempotent: the stamp is rebuilt only when pyproject.toml (the packaging metadata) or setup.py changes.
# Every extra: the pipeline with GraphSAGE, aws mode (moto tests), `instarec serve`, the Spark engine's
# parity tests (Java 17: .ci/run installs it), the tools.
$(VENV)/.installed: setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# The CPU build of torch first (a local wheel where the machine has one), so that the
	# resolver never swaps in the multi-GB CUDA build for the plain pin of the graph extra.
	$(BIN)/pip install -q "torch==2.13.0+cpu" || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e '.[dev,aws,graph,serve,spark]'
	touch $@

install: $(VENV)/.installed

# cfn-lint and checkov pin an old botocore that breaks s3fs, so they live in their own venv.
# Pinned so CI and every checkout judge the templates alike; a pin change here reinstalls (the stamp
# depends on this Makefile).
$(TOOLS_VENV)/.installed: Makefile
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q -U pip
	$(TOOLS_VENV)/bin/pip install -q "cfn-lint==1.58.0" "checkov==3.3.30"
	touch $@

tools: $(TOOLS_VENV)/.installed

test: install tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Load and validate the Dagster definitions as `dg` does (the dg project is [tool.dg] in pyproject.toml).
# VIRTUAL_ENV: make does not activate .venv, and dg warns (twice) when the active venv is not the project's.
defs: install
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs --use-active-venv

demo: install
	$(BIN)/instarec demo --home $(INSTAREC_HOME) --users $(DEMO_USERS)

# The instance config (the lake_history pool) is the one the CLI writes, so UI and CLI runs agree.
ui: install
	$(BIN)/python -c "from instarec_assets.lake.locations import LakeLocations; from instarec_assets.pipeline.runner import dagster_instance; dagster_instance(LakeLocations(home='$(INSTAREC_HOME)'))"
	DAGSTER_HOME=$(INSTAREC_HOME)/dagster $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Full-size benchmarks (minutes; not part of make test). Results are appended to bench/RESULTS.md.
bench: install
	$(BIN)/python bench/bench_lake.py --append-results

# The recommendations API and the page on http://127.0.0.1:8080/ (set INSTAREC_API_KEYS first);
# SERVE_ARGS passes options on, e.g. `make serve SERVE_ARGS=--page-key`.
serve: install
	$(BIN)/instarec serve --home $(INSTAREC_HOME) $(SERVE_ARGS)

bench-serving: install
	$(BIN)/python bench/bench_serving.py --append-results

clean:
	rm -rf $(INSTAREC_HOME) .pytest_cache .ruff_cache
