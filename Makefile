# llmmeter developer commands. `make run` and `make test` set everything up on a
# fresh machine (Python 3.11 with venv and pip): a local virtualenv, the client
# and service packages, and an embedded PostgreSQL.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: browser install run test lint lint-protos protos check-protos bench bench-ingest bench-query clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) -e clients/python -e '.[dev]'
	touch $(STAMP)

CHARTJS := .tools/node_modules/chart.js/dist/chart.umd.js
$(CHARTJS):
	npm install --silent --no-audit --no-fund --prefix .tools chart.js@4.5.1

install: $(STAMP) $(CHARTJS)  ## create the virtualenv and install everything (Chart.js for the console from npm)

run: $(STAMP) $(CHARTJS)  ## the whole stack on the embedded PostgreSQL (or DATABASE_URL)
	$(PY) -m llmmeter_common.stack

# The console's browser tests drive Debian's chromium (Playwright never downloads a browser here).
browser:  ## install Debian's chromium unless there is one
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) $(CHARTJS) browser  ## the whole test suite against a real throwaway PostgreSQL
	$(PY) -m pytest

lint: $(STAMP)  ## ruff and mypy (generated code excluded)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy services clients/python/src/llmmeter

BUF := .tools/node_modules/.bin/buf
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

lint-protos: $(BUF)  ## buf STANDARD lint rules on protos/
	$(BUF) lint

protos: $(STAMP)  ## regenerate the Python code of protos/ into the client package
	PYTHON=$(PY) bash scripts/gen_protos.sh

check-protos: protos  ## fail if the checked-in generated code differs from protos/
	git diff --exit-code -- clients/python/src/llmmeter/v1 || \
	  (echo "generated code is out of date: run 'make protos' and commit" >&2; exit 1)
	test -z "$$(git status --porcelain -- clients/python/src/llmmeter/v1)"

bench: bench-ingest bench-query  ## every benchmark

bench-ingest: $(STAMP)  ## end-to-end ingest throughput versus raw COPY
	$(PY) bench/bench_ingest.py

clean:
	rm -rf $(VENV) .tools .llmmeter .pytest_cache .mypy_cache .ruff_cache

bench-query: $(STAMP)  ## query latency at 10M records versus raw-scan SQL, percentile error
	$(PY) bench/bench_query.py
