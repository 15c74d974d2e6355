# Set-up and the two entry points the README promises: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: demo test install lint bench clean

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
# cores' torch threads (tests/conftest.py): half the suite is single-threaded Python, subprocess
# start-up and I/O that two workers overlap. 2-core VM, same tests: 724 s serial, 440 s this way.
# `make test TEST_WORKERS=0` runs them serially in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_encoder.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
