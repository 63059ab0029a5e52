# Two commands for a fresh machine: `make demo` (set up + the main job) and `make test` (set up + tests).
# torch==2.13.0 goes in first: the CPU wheel here, the CUDA build on a Linux GPU box.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	touch $@

demo: setup
	$(BIN)/deptune sweep search_spaces/demo.yaml

# The two lanes, every test once: the fast lane over pytest-xdist workers, then the tests that start Ray, a server
# or a sweep, one at a time in one process (one Ray cluster at a time on a machine). Both run; either failing fails.
FAST_LANE := -n auto --maxprocesses 4 -m "not slow and not cluster"
test: setup
	$(BIN)/python -m pytest $(FAST_LANE); fast=$$?; \
	$(BIN)/python -m pytest -m "slow or cluster"; slow=$$?; \
	[ $$fast -eq 0 ] && [ $$slow -eq 0 ]

# The edit-test loop: no Ray, no servers, no subprocess sweeps.
test-fast: setup
	$(BIN)/python -m pytest $(FAST_LANE)

lint: setup
	$(BIN)/ruff check platform tests benchmarks deploy
	$(BIN)/ruff format --check platform tests benchmarks deploy

bench: setup
	$(BIN)/python benchmarks/efficiency.py
	$(BIN)/python benchmarks/real_sst2.py
	$(BIN)/python benchmarks/sweep_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
