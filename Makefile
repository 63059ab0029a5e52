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

test: setup
	$(BIN)/python -m pytest

# The edit-test loop: no Ray, no servers, no subprocess sweeps (tests marked slow or cluster are left out).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not cluster"

lint: setup
	$(BIN)/ruff check platform tests benchmarks deploy
	$(BIN)/ruff format --check platform tests benchmarks deploy

bench: setup
	$(BIN)/python benchmarks/efficiency.py
	$(BIN)/python benchmarks/real_sst2.py
	$(BIN)/python benchmarks/sweep_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
