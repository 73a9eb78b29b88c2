# `make run`: set up, migrate, load demo data and serve on SQLite.
# `make test`: set up, lint, type-check and run the tests on SQLite, then on PostgreSQL when
# TEST_POSTGRES_URL is set (e.g. postgresql://postgres@127.0.0.1:5432/test).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
AUDIT := tests/http_audit
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml $(AUDIT)/package-lock.json | cksum | cut -d' ' -f1)
CODEGEN := clients/python/.venv
TS_CLIENT := clients/typescript
CODEGEN_STAMP := $(CODEGEN)/.installed-$(shell cat clients/python/requirements.lock $(TS_CLIENT)/package-lock.json | cksum | cut -d' ' -f1)

.PHONY: setup run test lint schema security clean clients codegen-tools vendor

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
	@echo "Pages:     http://$${MIM_HOST:-127.0.0.1}:$${MIM_PORT:-8080}/ui/  (sign in with a token)"
	@echo "Tokens:    $(BIN)/mim token --persona exec   (or stakeholder, responder, ingest, admin)"
	@echo "An admin token for this session:"
	@$(BIN)/mim token --persona admin --sub demo-admin
	@echo
	$(BIN)/mim serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server schema registry

test: lint codegen-tools
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
	TEST_DATABASE_URL="$${TEST_DATABASE_URL:-$$TEST_POSTGRES_URL}" MIM_LEAK_SIZE=full MIM_OVERLOAD_SECONDS=3 \
		MIM_FIGURES_FILE=$(CURDIR)/.security-figures.jsonl $(BIN)/pytest -q -m security
	TEST_DATABASE_URL="$${TEST_DATABASE_URL:-$$TEST_POSTGRES_URL}" MIM_FUZZ_EXAMPLES=200 \
		MIM_FIGURES_FILE=$(CURDIR)/.security-figures.jsonl $(BIN)/pytest -q tests/server/test_rest_fuzz.py
	$(BIN)/python -m tests.figures .security-figures.jsonl

schema: setup codegen-tools
	$(BIN)/python -m schema > schema.graphql
	$(CODEGEN)/bin/python clients/python/generate.py

# The typed clients' generators, pinned apart from the project's venv (ariadne-codegen needs an
# older ruff than ours); tests/clients/ regenerate with them and compare.
codegen-tools: $(CODEGEN_STAMP)

$(CODEGEN_STAMP): clients/python/requirements.lock $(TS_CLIENT)/package-lock.json
	$(PYTHON) -m venv $(CODEGEN)
	$(CODEGEN)/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.lock
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(TS_CLIENT) --no-audit --no-fund --silent; \
	else \
		echo "npm not found: the TypeScript client's tests will be skipped"; \
	fi
	rm -f $(CODEGEN)/.installed-*
	touch $@

# Regenerate the typed Python client (clients/python/mim_client) after a change to schema.graphql
# or schema/operations, and commit it.
clients: codegen-tools
	$(CODEGEN)/bin/python clients/python/generate.py

# Refetch the browser packages GraphiQL runs on and rewrite their manifest (server/vendor.py).
vendor: setup
	$(BIN)/python -m server.vendor

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(CODEGEN) $(TS_CLIENT)/node_modules $(TS_CLIENT)/src
