# Two commands on a fresh machine: `make run` and `make test`. Both create .venv on first use
# (pip + venv, torch pinned) and re-use it afterwards.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup run test test-unit test-integration test-faults lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev,timm]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

run: setup
	$(BIN)/grasp run --baselines

test: setup
	$(BIN)/ruff check grasp_core flows tests
	$(BIN)/mypy grasp_core
	$(BIN)/pytest tests/unit
	$(BIN)/pytest tests/integration

test-unit: setup
	$(BIN)/pytest tests/unit

test-integration: setup
	$(BIN)/pytest tests/integration

test-faults: setup  # the fault suite alone (it also runs inside `make test`)
	$(BIN)/pytest -m faults tests/unit tests/integration

lint: setup
	$(BIN)/ruff check grasp_core flows tests
	$(BIN)/mypy grasp_core

clean:
	rm -rf data checkpoints mlruns mlflow.db mlartifacts .cache results
