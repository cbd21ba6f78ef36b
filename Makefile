# Eventline: `make run` starts the suite locally, `make test` runs every test.
# Both work on a fresh clone: they create .venv and install the project into it
# (again whenever pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint protos check-protos clean-data

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Starts ingestion, segmentation and campaigns, plus an embedded PostgreSQL and
# Redis (data under .eventline/) unless EVENTLINE_DATABASE_URL / EVENTLINE_REDIS_URL
# are set. Ctrl-C stops everything; the data stays.
run: $(STAMP)
	@echo "Starting Eventline (Ctrl-C stops it). Once it is up, in another terminal:"
	@echo "  $(BIN)/eventline demo                                           # campaigns at work, messages shown"
	@echo "  $(BIN)/eventline events send --customer c1 --name signed_up     # send an event"
	@echo "  $(BIN)/eventline timeline c1                                    # read the timeline"
	@echo "  grpcurl -plaintext 127.0.0.1:50051 list                         # the API, by reflection"
	$(BIN)/eventline up

# The whole suite, against PostgreSQL/Redis from the environment when reachable,
# otherwise against embedded servers started for the run (EVENTLINE_EMBEDDED=1 forces them).
test: $(STAMP)
	$(BIN)/python -m eventline_shared.embedded test -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy libs/eventline_shared libs/eventline_cli services
	$(BIN)/buf lint

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

clean-data:
	rm -rf .eventline
