# socp-testbed: developer and CI entry points (GNU make). `make help` lists them.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --no-print-directory

# Interpreter for the virtualenv; the image's Python is 3.11, so prefer that.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := .venv
VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.socp-installed

PYTEST_ARGS ?=
SOCP_IMAGE ?= socp-node:latest
PROJECT_LABEL := org.socp-testbed.project=socp-testbed
# Only the paths that exist: ruff reports a missing path as an error.
LINT_PATHS := $(wildcard socp node client testbed tests bench)
# Compose CLI for targets that drive containers: the v2 plugin when present,
# else the v1 `docker-compose` binary.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)

# The `make up` federation (compose project `socp`, files in build/federation/) and scenario runs.
TESTBED ?= $(VENV)/bin/socp-testbed
PEERS ?= 3
INTRODUCERS ?= 1
NODE ?=
SCENARIO ?= smoke
# INTEROP=1: every node runs the interop profile (--interop, docs/INTEROP.md), so other implementations can join.
INTEROP ?=
INTEROP_FLAG := $(if $(filter 1,$(INTEROP)),--interop)
BACKEND ?= docker
FEDERATION_DIR := build/federation
# BACKEND=swarm: a Docker Swarm stack with a fresh name per `make up`, recorded in build/swarm/ (docs/SWARM.md).
# INIT_SWARM=1 lets the testbed make a one-node swarm when the engine is in none (never done otherwise).
SWARM_DIR := build/swarm
INIT_SWARM ?=
PLACEMENT ?=

.PHONY: help venv test lint bench image up ps logs chat scenario down clean distclean clean-images manifests swarm-init swarm-leave

help: ## List the targets
	@echo 'usage: make <target> [PYTEST_ARGS=...] [SOCP_IMAGE=...]'
	@echo '       make up [PEERS=3] [INTRODUCERS=1|3] [INTEROP=1]; make chat NODE=peer2 USER=alice; make logs [NODE=peer1]'
	@echo '       make scenario SCENARIO=smoke PEERS=5 [BACKEND=docker|local|swarm]'
	@echo '       make up|ps|down BACKEND=swarm [PEERS=5] [INIT_SWARM=1] [PLACEMENT=peer1=host-a,...]'
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-13s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

venv: $(VENV_STAMP) ## Create .venv and install the project with its dev extras (when pyproject.toml changed)

$(VENV_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo 'make: no python3.11 or python3 on PATH' >&2; exit 1; }
	@if ! $(VENV_PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
		echo "creating $(VENV) with $(PYTHON)"; \
		rm -rf $(VENV); \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(VENV_PY) -m pip install --disable-pip-version-check --quiet -e '.[dev]'
	@touch $@

# The Docker tests need the image: it is built (or found up to date) first whenever Docker answers, and
# always with SOCP_REQUIRE_DOCKER=1 (CI), where an unusable Docker must fail the run rather than skip.
DOCKER_USABLE := $(shell docker info >/dev/null 2>&1 && echo 1)
test: venv $(if $(filter 1,$(SOCP_REQUIRE_DOCKER) $(DOCKER_USABLE)),image) ## Run pytest: unit, local and Docker suites (PYTEST_ARGS=...)
	SOCP_IMAGE=$(SOCP_IMAGE) $(VENV_PY) -m pytest $(PYTEST_ARGS)

lint: venv ## ruff check and mypy --strict
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

bench: venv ## Benchmarks: protocol core and end-to-end operations -> results/bench-core.json, bench-ops.json
	$(VENV_PY) -m bench.bench_core
	$(VENV_PY) -m bench.bench_ops

.PHONY: simulate
SIM_ARGS ?= --sizes 100,300
simulate: venv ## In-memory simulation of big federations (fake clock, fake crypto) -> results/simulate.json (SIM_ARGS=...)
	$(VENV_PY) -m bench.simulate $(SIM_ARGS)

.PHONY: bench-scale
SCALE_ARGS ?=
bench-scale: venv image ## Presence convergence and load at 3..30 Docker and 3..50 local peers -> results/bench-scale.{json,md,png} (SCALE_ARGS=...)
	$(VENV_PY) -m pip install --disable-pip-version-check --quiet -e '.[dev,bench]'
	SOCP_IMAGE=$(SOCP_IMAGE) $(VENV_PY) -m bench.bench_scale $(SCALE_ARGS)

image: ## Build the node image socp-node:latest (no registry needed: see compose/build-image.sh)
	SOCP_IMAGE=$(SOCP_IMAGE) PYTHON=$(PYTHON) compose/build-image.sh

up: venv image ## Start (or replace) the federation in containers: PEERS=3 INTRODUCERS=1|3 [BACKEND=swarm]; prints how to connect
ifeq ($(BACKEND),swarm)
	SOCP_IMAGE=$(SOCP_IMAGE) $(TESTBED) swarm up --peers $(PEERS) --introducers $(INTRODUCERS) --workdir $(SWARM_DIR) \
		$(if $(filter 1,$(INIT_SWARM)),--init-swarm) $(if $(PLACEMENT),--placement '$(PLACEMENT)') $(INTEROP_FLAG)
else
	SOCP_IMAGE=$(SOCP_IMAGE) $(TESTBED) up --peers $(PEERS) --introducers $(INTRODUCERS) --workdir $(FEDERATION_DIR) \
		$(INTEROP_FLAG)
endif

ps: venv ## The federation's nodes: state, health, server id, URL on 127.0.0.1 [BACKEND=swarm]
ifeq ($(BACKEND),swarm)
	@$(TESTBED) swarm ps --workdir $(SWARM_DIR)
else
	@$(TESTBED) ps --workdir $(FEDERATION_DIR)
endif

logs: venv ## Logs of every node of the federation, or of one: NODE=peer1
	@$(TESTBED) logs --workdir $(FEDERATION_DIR) $(NODE)

chat: venv ## Interactive client on a node of the federation: NODE=peer2 USER=alice
	@test -n "$(NODE)" || { echo 'usage: make chat NODE=peer2 USER=alice' >&2; exit 2; }
	@url=$$($(TESTBED) url $(NODE)); \
	echo "connecting $(USER) to $(NODE) at $$url (keys in $(FEDERATION_DIR)/users; /help for commands)"; \
	exec $(VENV)/bin/socp-client --user $(USER) --server "$$url" --key-dir $(FEDERATION_DIR)/users

# PEERS is passed only when given (make scenario PEERS=5): otherwise the scenario's own count holds.
scenario: venv $(if $(filter docker swarm,$(BACKEND)),image) ## Run a scenario: SCENARIO=smoke PEERS=5 BACKEND=docker|local|swarm
	SOCP_IMAGE=$(SOCP_IMAGE) $(if $(filter 1,$(INIT_SWARM)),SOCP_INIT_SWARM=1) $(TESTBED) run testbed/scenarios/$(SCENARIO).yaml --backend $(BACKEND) \
		$(if $(filter-out file default undefined,$(origin PEERS)),--peers $(PEERS)) $(INTEROP_FLAG)

# BACKEND=swarm removes exactly the stack `make up BACKEND=swarm` recorded, and nothing else on the swarm.
down: ## Remove every container, network and volume labelled org.socp-testbed.project=socp-testbed [BACKEND=swarm: the stack only]
ifeq ($(BACKEND),swarm)
	@$(TESTBED) swarm down --workdir $(SWARM_DIR)
else
	@ids=$$(docker ps -aq --filter label=$(PROJECT_LABEL)); \
	if [ -n "$$ids" ]; then echo "removing containers: $$(echo $$ids)"; docker rm -fv $$ids >/dev/null; fi
	@ids=$$(docker network ls -q --filter label=$(PROJECT_LABEL)); \
	if [ -n "$$ids" ]; then echo "removing networks: $$(echo $$ids)"; docker network rm $$ids >/dev/null; fi
	@ids=$$(docker volume ls -q --filter label=$(PROJECT_LABEL)); \
	if [ -n "$$ids" ]; then echo "removing volumes: $$(echo $$ids)"; docker volume rm -f $$ids >/dev/null; fi
endif

manifests: venv ## Kubernetes manifests (StatefulSet per role) -> build/k8s/socp.yaml: PEERS=3 INTRODUCERS=1|3 SOCP_IMAGE=...
	$(TESTBED) manifests --k8s --peers $(PEERS) --introducers $(INTRODUCERS) --image $(SOCP_IMAGE) $(INTEROP_FLAG)

swarm-init: venv ## Make a one-node swarm on 127.0.0.1 for BACKEND=swarm (marked as made by the testbed)
	$(TESTBED) swarm init

swarm-leave: venv ## Leave the swarm, only if the testbed made it and it runs no service
	$(TESTBED) swarm leave

clean: ## Remove build outputs and caches (keeps .venv, forgets its stamp)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache $(VENV_STAMP)
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv
	rm -rf $(VENV)

clean-images: down ## down, and remove the project's images (socp-node, socp-base)
	@# A parent cannot go before its children: newest first, over a few passes.
	@for pass in 1 2 3 4 5; do \
		ids=$$(docker images -a -q --filter label=$(PROJECT_LABEL) | awk '!seen[$$0]++'); \
		[ -n "$$ids" ] || exit 0; \
		echo "removing images: $$(echo $$ids)"; \
		docker rmi -f $$ids >/dev/null 2>&1 || true; \
	done; \
	echo "images left: $$(docker images -a -q --filter label=$(PROJECT_LABEL))" >&2; exit 1
