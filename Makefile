# Set-up and the entry points the README promises: `make demo`, `make check` (the fast loop) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: demo check test install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Torch first and pinned: `torch==2.13.0` resolves to the local CPU build; letting another
# package pull torch would download several GB of CUDA wheels.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/latentcube demo --out $(DEMO_OUT)

# Two pytest-xdist workers, tests handed out one at a time (`worksteal`), each worker with half the
# cores' torch threads (tests/conftest.py): much of the suite is single-threaded Python, subprocess
# start-up and I/O that two workers overlap (timings: benchmarks/RESULTS.md).
# `make test TEST_WORKERS=0` runs them serially in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# The fast loop while editing: lint, then every test not marked slow (a test over ~10 s is marked slow).
check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(PYTEST) -m "not slow"

# Everything (what CI runs): the slow tests too.
test: $(STAMP)
	$(PYTEST)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_encoder.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
