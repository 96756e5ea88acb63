# Two commands do all set-up on a fresh machine:
#   make run    creates/updates the virtual environment, then `dvc repro` (embedded default)
#   make test   creates/updates the virtual environment, then the test suite
# The environment is rebuilt when pyproject.toml changes (stamp file below).

PYTHON ?= python3
# pytest-xdist workers for make test (0: one process). The suite waits on servers and subprocesses (Ray,
# PostgreSQL, DVC stages) as much as it computes, so TEST_WORKERS=2 on two cores overlaps the waits (1.3-1.4x); each
# worker starts its own servers. Opt-in until it has run clean repeatedly (README, Two commands).
TEST_WORKERS ?= 0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.radclip-installed

# Nothing reaches the network at run time; these cover the tools that start before radclip code does.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export RAY_USAGE_STATS_ENABLED := 0
# Ray's system metrics off (a RayConfig switch every Ray process reads from RAY_<name>): nothing reads them
# without a Prometheus, and their exporters took CPU from the Ray stages (README, Two commands). A cluster
# started by hand keeps its own setting.
export RAY_enable_metrics_collection := 0
# Ray Train's controller polls its workers every 2 s by default, and a fit ends only at a poll after its last
# epoch (two or three of them): at 0.25 s each Ray Train fit ends seconds sooner; results do not depend on it.
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S := 0.25
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test venv bench bench-deps clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade -c constraints.txt pip
	# torch first and pinned: the CPU build on disk here; unpinned torch pulls a multi-GB CUDA build.
	# constraints.txt (shared with the Dockerfile) fixes every other version.
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

run: venv
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "make run needs a git checkout (DVC tracks the pipeline in git)"; exit 1; }
	$(BIN)/dvc repro

test: venv
	$(BIN)/ruff check radclip pipelines
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# open_clip for bench/train.py's peer row, outside the venv (bench/requirements.txt says why)
BENCH_SITE := $(VENV)/bench-site
BENCH_STAMP := $(BENCH_SITE)/.radclip-installed

$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(BENCH_SITE) -c constraints.txt -r bench/requirements.txt
	@touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)

bench: venv $(BENCH_STAMP)
	$(BIN)/python bench/curate.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/lrclr.py
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf .tmp data/curated.partial
