# Referral rewards — every entry point a newcomer, CI and an operator needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_FLAGS ?=

.DEFAULT_GOAL := help
.PHONY: help install deps run demo test test-all bench soak lint schemas dev-up dev-down clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create the virtualenv and install the project with its dev tools

deps: ## system packages the tests use (promtool from Debian's prometheus)
	@command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus package for promtool"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

run: install ## start the embedded stack, run the year-long demo, stop everything
	$(BIN)/referrals demo

demo: run

test: install deps ## run the test suite (unit, adapters, end to end on the embedded stack)
	$(BIN)/pytest $(PYTEST_FLAGS)

test-all: install deps ## the suite plus slow soak tests
	$(BIN)/pytest -m '' $(PYTEST_FLAGS)

bench: install ## benchmarks against same-run baselines; writes bench/results.json
	$(BIN)/python -m bench.run

lint: install ## ruff + mypy (strict on the pure cores and the schemas)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services/referral-consumer/referral_consumer/core services/payout-scheduler/payout_scheduler/core schemas/referral_events
	$(BIN)/mypy services/common/referrals services/referral-consumer/referral_consumer services/payout-scheduler/payout_scheduler

schemas: install ## regenerate JSON Schema + AsyncAPI from the pydantic models
	$(BIN)/python -m referral_events.generate

dev-up: install ## start PostgreSQL + Tansu in the background (.dev/stack.env)
	$(BIN)/referrals dev up

dev-down: install ## stop the embedded stack
	$(BIN)/referrals dev down

clean: ## remove the virtualenv, caches and the embedded stack's data
	-@test -x $(BIN)/referrals && $(BIN)/referrals dev down
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
