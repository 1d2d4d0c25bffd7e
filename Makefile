# loyalty-engine developer and CI entry points. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_FLAGS := --quiet --disable-pip-version-check

# Only folders that exist: git keeps no empty ones (bench/ may be empty on a fresh clone).
LINT_PATHS := $(wildcard loyalty_engine tests bench scripts)
GEN_DIR := loyalty_engine/gen
PROTO_DIR := protos
PYTEST_ARGS ?=
# `make gen` needs the dev tools installed; gen-check overrides this when it
# re-runs `gen` in a scratch copy against this checkout's venv.
GEN_DEPS ?= $(STAMP)
# The ref `buf breaking` compares against (buf input syntax).
BUF_AGAINST ?= .git\#branch=main,subdir=$(PROTO_DIR)

.PHONY: help venv install gen gen-check buf-lint buf-breaking lint pytest test \
        postgres serve bench bench-segments soak clean

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sort \
	  | awk 'BEGIN {FS = ":.*## "} {printf "  %-13s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev]'
	@touch $@

venv: $(PY) ## Create the virtualenv in .venv

install: $(STAMP) ## Install the package and dev tools into .venv

gen: $(GEN_DEPS) ## Regenerate Python code and mypy stubs from protos/
	@ls $(PROTO_DIR)/loyalty/v1/*.proto >/dev/null 2>&1 \
	  || { echo "gen: no $(PROTO_DIR)/loyalty/v1/*.proto to compile" >&2; exit 1; }
	rm -rf $(GEN_DIR) && mkdir -p $(GEN_DIR)/loyalty/v1
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I $(PROTO_DIR) \
	  --python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
	  --mypy_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) \
	  $(PROTO_DIR)/loyalty/v1/*.proto
	touch $(GEN_DIR)/__init__.py $(GEN_DIR)/loyalty/__init__.py $(GEN_DIR)/loyalty/v1/__init__.py
	$(PY) scripts/fix_generated_imports.py $(GEN_DIR)

gen-check: install ## Fail if loyalty_engine/gen differs from what the protos generate
	@if ! ls $(PROTO_DIR)/loyalty/v1/*.proto >/dev/null 2>&1; then \
	  if [ -d $(GEN_DIR) ] && find $(GEN_DIR) -name '*_pb2*.py' | grep -q .; then \
	    echo "generated code drifted: run make gen (no protos, but $(GEN_DIR) has generated code)" >&2; \
	    exit 1; \
	  fi; \
	  echo "gen-check: no protos yet, nothing to check"; exit 0; \
	fi; \
	scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; \
	cp -R Makefile $(PROTO_DIR) scripts "$$scratch"/; \
	$(MAKE) -C "$$scratch" gen GEN_DEPS= VENV="$(abspath $(VENV))" >"$$scratch/gen.log" 2>&1 \
	  || { cat "$$scratch/gen.log" >&2; echo "gen-check: code generation failed" >&2; exit 1; }; \
	if ! diff -r -x __pycache__ "$$scratch/$(GEN_DIR)" $(GEN_DIR); then \
	  echo "generated code drifted: run make gen" >&2; exit 1; \
	fi; \
	echo "gen-check: $(GEN_DIR) is up to date"

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

buf-lint: node_modules/.package-lock.json ## Lint protos with buf (STANDARD)
	npx --no-install buf lint

# Compares against main; skipped while main has no protos (the first commit of the
# contract) or when this is not a git checkout with a local main branch.
buf-breaking: node_modules/.package-lock.json ## Check protos for breaking changes against main
	@if ! git rev-parse --verify --quiet refs/heads/main >/dev/null 2>&1; then \
	  echo "buf-breaking: no commit on a local branch main yet, skipping"; \
	elif ! git ls-tree -r --name-only main -- $(PROTO_DIR) | grep -q '\.proto$$'; then \
	  echo "buf-breaking: main has no protos yet, skipping"; \
	else \
	  echo "npx --no-install buf breaking $(PROTO_DIR) --against '$(BUF_AGAINST)'"; \
	  npx --no-install buf breaking $(PROTO_DIR) --against '$(BUF_AGAINST)'; \
	fi

lint: install ## ruff, ruff format --check, mypy, buf lint/breaking, gen-check
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy
	@if command -v npm >/dev/null 2>&1 || [ "$${CI:-}" = "true" ]; then \
	  $(MAKE) buf-lint buf-breaking; \
	else \
	  echo "lint: npm not found, skipping buf lint and buf breaking (install Node.js to run them; CI always does)"; \
	fi
	@$(MAKE) gen-check

postgres: ## Make sure a PostgreSQL server is reachable for the tests
	bash scripts/ensure_postgres.sh

pytest: install postgres ## Run the test suite only (PYTEST_ARGS=... to filter)
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected"; rc=0; fi; \
	exit $$rc

test: lint pytest ## Lint, then run the whole test suite

serve: install ## Run the server on 127.0.0.1:50051 with SQLite ./loyalty.db and demo data
	$(PY) -m loyalty_engine serve --migrate --seed-demo --plaintext

bench: install postgres ## Run the benchmarks (PostgreSQL: started or installed by scripts/ensure_postgres.sh)
	$(PY) bench/run.py

bench-segments: install ## Run the segmentation benchmark (PostgreSQL)
	$(PY) bench/segments.py

SOAK_ARGS ?=
soak: install postgres ## Fault-injection soak on a private PostgreSQL (its own cluster) (~4 min; SOAK_ARGS=--quick or --seconds N)
	$(PY) bench/soak.py $(SOAK_ARGS)

clean: ## Remove the venv, caches, node_modules and local databases
	rm -rf $(VENV) node_modules build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
	rm -f *.db *.db-journal *.db-wal *.db-shm
