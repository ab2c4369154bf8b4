# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench infra-check clean

setup: $(VENV)/.installed .venv-infra/.installed node_modules/.installed local.settings.json

$(VENV)/.installed: requirements.txt requirements-local.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-local.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

.venv-infra/.installed: requirements-infra.txt
	test -x .venv-infra/bin/python || $(PYTHON) -m venv .venv-infra
	.venv-infra/bin/pip install --quiet --disable-pip-version-check -r requirements-infra.txt
	touch $@

infra-check: .venv-infra/.installed
	.venv-infra/bin/checkov -d infra --framework bicep --compact --quiet --skip-download

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

local.settings.json:
	cp local.settings.json.example $@

demo: setup
	$(BIN)/tuneflow demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

bench: setup
	$(BIN)/python bench/handoff_latency.py
	$(BIN)/python bench/prepare_throughput.py
	$(BIN)/python bench/reaper_plan.py
	$(BIN)/python bench/cold_start.py

clean:
	rm -rf .tuneflow
