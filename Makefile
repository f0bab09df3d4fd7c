# labkeeper: `make dev` brings up a local lab, `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEV_DIR ?= .dev
PYTEST_ARGS ?=

.PHONY: dev down test e2e image-test unit lint bench bench-scale labweek reliability deps venv bin crds chart image clean help

help:
	@echo "make dev    - local control plane + operator + agent on a sandbox host root, examples applied"
	@echo "make down   - stop what make dev started"
	@echo "make test   - the full suite (unit, host, integration, reduced reliability)"
	@echo "make lint   - ruff, the import-layer contracts and mypy (strict on api, render, controller)"
	@echo "make e2e    - the real-node suite: a kubelet, containerd and runc join the local cluster"

deps:
	@bash hack/deps.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

bin:
	@bash hack/k8s-bin.sh >/dev/null

# the image build (buildah, a debootstrapped base, ~7 GB of vfs writes) runs apart: make image-test
test: deps venv bin
	$(PY) -m pytest tests -m "not slow and not e2e" $(PYTEST_ARGS)

# workspaces as real containers on a real kubelet (root; containerd, runc and the CNI plugins from deps.sh)
e2e: deps venv bin
	$(PY) -m pytest tests/e2e -m e2e $(PYTEST_ARGS)

image-test: deps venv bin
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator tests bench hack
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

crds: venv
	$(PY) -m labkeeper.api.crds
	$(PY) hack/chart-sync.py

chart: venv
	$(PY) hack/chart-sync.py

image:
	@bash hack/image.sh

dev: deps venv bin
	@bash hack/dev.sh up

down:
	@bash hack/dev.sh down

bench: deps venv bin
	$(PY) bench/run.py

# a department-sized lab on kwok (100 nodes, 1000 users, 10 000 workspaces); under 40 min on 2 cores, not in make test
bench-scale: deps venv bin
	$(PY) bench/scale.py $(BENCH_ARGS)

# a lab's week under DS01's rules (simulated) and under the real operator on an accelerated clock (~30 min)
labweek: deps venv bin
	$(PY) bench/labweek.py $(BENCH_ARGS)

reliability: deps venv bin
	LABKEEPER_RELIABILITY_FULL=1 $(PY) -m pytest tests/reliability $(PYTEST_ARGS)

clean: down
	rm -rf $(DEV_DIR) $(VENV)
