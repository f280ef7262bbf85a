# make test: the whole suite on a fresh machine (creates .venv, installs, lints, tests).
# make run:  the main job: `mlsmctl up` on the example manifests, training the example job.

PYTHON ?= python3
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: help install lock system engine test unit lint format docs run bench clean

help:
	@echo "make test    install into .venv, lint, validate manifests/, run the test suite"
	@echo "make lint    ruff, mypy --strict, import-linter"
	@echo "make engine  a Docker Engine API (Podman's) and the test images; prints DOCKER_HOST"
	@echo "make docs    regenerate docs/reference/ (manifest and CLI references)"
	@echo "make lock    re-resolve requirements.lock from pyproject.toml (on purpose only)"
	@echo "make bench   benchmarks in bench/ (prints figures)"
	@echo "make run     the main job (see README)"

# System packages the tests use for real: PostgreSQL (a throwaway cluster per test
# session; the store and controller tests run on it as well as on SQLite) and
# Chromium (the status site's browser tests drive Debian's, through Playwright).
SYSTEM_PACKAGES = $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) \
                  $(if $(wildcard /usr/bin/chromium),,chromium)
system:
	@test -z "$(strip $(SYSTEM_PACKAGES))" || { \
	  echo "installing $(strip $(SYSTEM_PACKAGES)) (Debian packages the tests use for real)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; }

# Exact versions from requirements.lock (a new release of anything changes nothing
# until `make lock`), then mlsm itself without resolving again; pip check fails when
# pyproject.toml asks for something the lock lacks.
PIP := $(BIN)/python -m pip --disable-pip-version-check
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -r requirements.lock >$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	$(PIP) install --quiet --no-deps --no-build-isolation -e . >$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@$(PIP) check || { echo "requirements.lock does not satisfy pyproject.toml: run make lock"; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

# A real Docker Engine API for the docker runtime (its tests, and `make run`'s
# container job): Podman from Debian's packages serving the API on
# /run/podman/podman.sock, and the test images made offline, once per recipe
# (tools/engine.py; the Python image, about 100 s the first time, is built in the
# background while `make test` lints and runs the first tests). Writes
# .mlsm/engine.env, which `make test` reads.
engine: $(STAMP)
	$(BIN)/python tools/engine.py

lock:
	$(PYTHON) tools/lock_dependencies.py

# docs/reference/: the manifest reference from the schemas, the CLI reference from the
# commands (tests/unit/test_reference.py fails when they are out of date).
docs: $(STAMP)
	$(BIN)/python tools/make_reference.py

lint: $(STAMP)
	$(BIN)/ruff check mlsm tests bench tools
	$(BIN)/ruff format --check mlsm tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format mlsm tests bench tools
	$(BIN)/ruff check --fix mlsm tests bench tools

ENGINE_ENV = set -a && . .mlsm/engine.env && set +a

# The suite on three workers: most integration tests wait on real processes, and one
# worker left a core idle. Slowest first (tests/conftest.py). mlsm's bytecode is
# compiled first: the tests start some hundreds of processes, and where
# PYTHONDONTWRITEBYTECODE is set each would compile mlsm again.
PYTEST = env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m compileall -q mlsm \
	&& $(ENGINE_ENV) && $(BIN)/python -m pytest -q -n 3 --dist load

unit: $(STAMP) system engine
	$(PYTEST)

# The Debian packages install while pip does; then lint runs beside the suite (the
# cores have room for it), its output kept in .mlsm/lint.log and shown after the
# suite's. Either failing fails make test.
test:
	@$(MAKE) --no-print-directory --jobs=3 --output-sync=target install engine system
	$(BIN)/mlsmctl validate manifests/
	@$(MAKE) --no-print-directory lint >.mlsm/lint.log 2>&1 & lint=$$!; \
	  $(PYTEST); tests=$$?; wait $$lint; linted=$$?; \
	  echo "make lint (beside the suite):"; cat .mlsm/lint.log; \
	  test $$tests = 0 && test $$linted = 0

bench: $(STAMP) system engine
	$(BIN)/python bench/validate_manifests.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/trainer.py
	$(BIN)/python bench/scheduling.py
	$(BIN)/python bench/heartbeats.py
	$(BIN)/python bench/bad_tokens.py
	$(BIN)/python bench/job_start.py
	$(BIN)/python bench/logs.py
	$(BIN)/python bench/agent_idle.py
	$(BIN)/python bench/container_start.py
	$(BIN)/python bench/site.py

# The main job: an installation on this machine (controller on SQLite + one agent)
# following the example manifests in a local git repository; it trains the example
# ResNet on the digits (made offline) and keeps running until Ctrl-C.
DEMO := .mlsm/demo/manifests
run: $(STAMP)
	@test -d $(DEMO)/.git || { rm -rf $(DEMO) && mkdir -p $(dir $(DEMO)) && cp -r manifests $(DEMO) \
	  && git -C $(DEMO) init -q -b main && git -C $(DEMO) add -A \
	  && git -C $(DEMO) -c user.name=mlsm -c user.email=mlsm@localhost commit -qm "The example manifests" \
	  && echo "example manifests: a git repository in $(DEMO) (commit there; the controller follows it)"; }
	@$(BIN)/python tools/engine.py --for-run
	$(BIN)/python -m mlsm.training.demo digits .mlsm/up/node/datasets/digits
	$(BIN)/mlsmctl up --repo $(DEMO) --state-dir .mlsm/up --follow resnet-digits

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
