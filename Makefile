# Two commands for a fresh machine: `make run` (the service) and `make test` (the tests).
# Each sets up the virtual environment with the pinned requirements on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed
# Test processes for `make test`; each takes whole test files (one file's tests share their servers).
TEST_PROCESSES ?= 2

.PHONY: run test audit lint format clean bench

# One environment for running and testing: the pinned runtime plus the pinned test tools.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	cat requirements.txt requirements-dev.txt > $(STAMP)

## run: the whole service (web + worker, and a Redis of its own when REDIS_URL is unset)
run: $(STAMP)
	$(BIN)/python launch.py

## test: lint, then every test (unit, integration with a real worker, end-to-end processes)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile

## audit: known vulnerabilities of the pinned runtime requirements (pip-audit; accepted ones in .ci/audit-ignore)
audit: $(STAMP)
	$(BIN)/python .ci/audit.py

## bench: benchmarks (ingest, callback lag, capacity, threaded workers, sizing) -> bench/RESULTS.md; BENCH_ARGS=--quick for a smoke run
bench: $(STAMP)
	@missing=""; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) instance .pytest_cache
