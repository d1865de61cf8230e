# Referral rewards — every entry point a newcomer, CI and an operator needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-dev.lock | cksum | cut -d' ' -f1)
PYTEST_FLAGS ?=
# The image the manifests run: its name from deploy/k8s/release/, its tag the project's one
# version (pyproject.toml; the release names the same, a test checks), its revision the commit.
RELEASE := deploy/k8s/release/kustomization.yaml
IMAGE ?= $(shell sed -n 's/^ *newName: *"\{0,1\}\([^" ]*\)"\{0,1\} *$$/\1/p' $(RELEASE) | head -1)
VERSION ?= $(shell sed -n 's/^version *= *"\([^"]*\)"$$/\1/p' pyproject.toml | head -1)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git status --porcelain 2>/dev/null | grep -q . && echo -dirty)
LOCK := $(BIN)/uv pip compile pyproject.toml --group build --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock' --quiet
LOCK_FLAGS ?=
# axe-core for the browser tests' accessibility checks, from the pinned npm lock beside them.
AXE := tests/browser/node_modules/axe-core/axe.min.js
APT_INSTALL := apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.DEFAULT_GOAL := help
.PHONY: help install deps run demo test test-all chaos test-containers bench soak lint audit schemas dev-up dev-down clean image lock monitoring

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create the virtualenv and install the project with its dev tools

deps: $(AXE) ## what the tests use beside Python: promtool (Debian's prometheus), Debian's chromium and chromium-driver, axe-core (npm, pinned)
	@command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus package for promtool"; \
	  $(APT_INSTALL) prometheus >/dev/null; }
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { \
	  echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	  $(APT_INSTALL) chromium chromium-driver >/dev/null; }

$(AXE): tests/browser/package-lock.json
	@command -v npm >/dev/null || { echo "installing Debian's npm"; $(APT_INSTALL) npm >/dev/null; }
	@echo "installing axe-core from tests/browser/package-lock.json"
	npm ci --prefix tests/browser --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

run: install deps ## start the embedded stack, run the year-long demo, stop everything (screenshots of the pages in demo-screenshots/)
	$(BIN)/referrals demo

demo: run

test: install deps ## run the test suite (unit, adapters, end to end on the embedded stack)
	$(BIN)/pytest $(PYTEST_FLAGS)

test-all: install deps ## the suite plus slow soak tests
	$(BIN)/pytest -m '' $(PYTEST_FLAGS)

chaos: install deps ## fault injection: broker cut/stall storms and outages longer than make test's
	$(BIN)/pytest -m chaos $(PYTEST_FLAGS)

test-containers: install ## the end-to-end suite against Apache Kafka (KRaft) + PostgreSQL containers (needs Docker)
	@docker info >/dev/null 2>&1 || { echo "make test-containers: no Docker engine is reachable here ('docker info' fails); nothing was tested" >&2; exit 1; }
	TEST_STACK=containers $(BIN)/pytest tests/e2e $(PYTEST_FLAGS)

bench: install ## benchmarks against same-run baselines; writes bench/results.json
	$(BIN)/python -m bench.run

lint: install deps ## import contracts, ruff, mypy, hadolint on the Dockerfile, promtool on the alerts
	$(BIN)/hadolint Dockerfile
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml
	$(BIN)/python deploy/prometheus/generate_operator.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy program/referral_program schemas/referral_events
	$(BIN)/mypy runtime/referral_runtime services/referral-consumer/referral_consumer services/payout-scheduler/payout_scheduler services/referral-web/referral_web operations/referral_ops devtools/referral_devtools

audit: install ## SBOM (CycloneDX) of requirements.lock and its known vulnerabilities; says when it could not check
	$(BIN)/python -m referral_devtools.audit --lock requirements.lock --out build/audit

schemas: install ## regenerate JSON Schema + AsyncAPI from the pydantic models, and the read API's OpenAPI
	$(BIN)/python -m referral_events.generate
	$(BIN)/python -m referral_web.openapi

image: ## build the image deploy/k8s/release/ names, tagged with the version, labelled with the commit (needs Docker)
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine is reachable here ('docker info' fails); build on a machine that has one" >&2; exit 1; }
	docker build --pull --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE):$(VERSION) .

lock: install ## refresh requirements.lock and requirements-dev.lock from pyproject.toml (LOCK_FLAGS=--upgrade)
	$(LOCK) $(LOCK_FLAGS) -o requirements.lock
	$(LOCK) $(LOCK_FLAGS) --extra dev --constraint requirements.lock -o requirements-dev.lock

monitoring: install ## regenerate deploy/k8s/monitoring/ (PrometheusRule, ServiceMonitor) from deploy/prometheus/
	$(BIN)/python deploy/prometheus/generate_operator.py

dev-up: install ## start PostgreSQL + Tansu in the background (.dev/stack.env)
	$(BIN)/referrals dev up

dev-down: install ## stop the embedded stack
	$(BIN)/referrals dev down

clean: ## remove the virtualenv, caches and the embedded stack's data
	-@test -x $(BIN)/referrals && $(BIN)/referrals dev down
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info tests/browser/node_modules
