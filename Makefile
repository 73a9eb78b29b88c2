# `make run`: set up, migrate, load demo data and serve on SQLite.
# `make test`: set up, lint, type-check and run the tests on SQLite, then on PostgreSQL when
# TEST_POSTGRES_URL is set (e.g. postgresql://postgres@127.0.0.1:5432/test).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
AUDIT := tests/http_audit
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml $(AUDIT)/package-lock.json | cksum | cut -d' ' -f1)

.PHONY: setup run test lint schema security clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml $(AUDIT)/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@# graphql-http's audit of the GraphQL over HTTP spec (tests/server/test_graphql_over_http.py).
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(AUDIT) --no-audit --no-fund --silent; \
	else \
		echo "npm not found: the GraphQL over HTTP audit test will be skipped"; \
	fi
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	$(BIN)/mim migrate
	$(BIN)/mim demo --if-empty
	@echo
	@echo "GraphiQL:  http://$${MIM_HOST:-127.0.0.1}:$${MIM_PORT:-8080}/graphql"
	@echo "Tokens:    $(BIN)/mim token --persona exec   (or stakeholder, responder, ingest, admin)"
	@echo "An admin token for this session:"
	@$(BIN)/mim token --persona admin --sub demo-admin
	@echo
	$(BIN)/mim serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server schema registry

test: lint
	$(BIN)/pytest
	@if [ -n "$$TEST_POSTGRES_URL" ]; then \
		TEST_DATABASE_URL="$$TEST_POSTGRES_URL" $(BIN)/pytest; \
	else \
		echo "PostgreSQL half skipped: set TEST_POSTGRES_URL to run the suite on PostgreSQL too."; \
	fi

# The security suite with its figures: tokens tried and rejected, generated queries and leaks,
# concurrent writes and rows found, faults injected and recovered.
security: setup
	rm -f .security-figures.jsonl
	TEST_DATABASE_URL="$${TEST_DATABASE_URL:-$$TEST_POSTGRES_URL}" MIM_LEAK_SIZE=full \
		MIM_FIGURES_FILE=$(CURDIR)/.security-figures.jsonl $(BIN)/pytest -q -m security
	$(BIN)/python -m tests.figures .security-figures.jsonl

schema: setup
	$(BIN)/python -m schema > schema.graphql

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
