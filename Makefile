# Two commands matter: `make run` and `make test` (see README). Everything runs from .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export FLASK_APP := api

.PHONY: run test test-sqlite test-postgres lint openapi serve bench wrk fuzz reliability clean venv

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

## make run: install, migrate, load the curated catalog, serve on http://127.0.0.1:8000 (docs at /docs)
run: venv
	$(BIN)/flask protocols migrate
	$(BIN)/flask protocols load
	@echo "== a write key for local use (reads are open to anonymous callers in make run) =="
	$(BIN)/flask keys create --name local-dev-$$(date +%Y%m%d-%H%M%S) --scope protocols:read --scope protocols:write --expires P1D
	PROTOCOLS_ANONYMOUS_READS=true $(BIN)/flask run --host 127.0.0.1 --port 8000

## make serve: production server (gunicorn, gunicorn.conf.py) against PROTOCOLS_DATABASE_URL.
## Run `flask protocols migrate` once per release first; see docs/operations.md.
serve: venv
	$(BIN)/gunicorn -c gunicorn.conf.py "api:create_app()"

## make test: the whole suite on SQLite and, when configured (always in CI), on PostgreSQL. The two legs
## share nothing (own databases, temp dirs, ports, rate-limit keys, pytest caches: --lf works per leg),
## so they run side by side; the PostgreSQL leg's output follows the SQLite leg's, and either failing
## fails the target. A background job of a non-interactive shell ignores Ctrl-C: on INT the PostgreSQL
## leg gets TERM, which tests/conftest.py turns into pytest's interrupt (teardown drops its databases).
PG_LOG = $${TMPDIR:-/tmp}/treatment-protocols-test-postgres-$$$$.log
test: venv wrk
	@if [ -n "$$PROTOCOLS_TEST_POSTGRES_URL" ] || [ "$$CI" = "true" ]; then \
		log=$(PG_LOG); basetemp=$${log%.log}; \
		echo "== SQLite and PostgreSQL legs, side by side (PostgreSQL's output: $$log, shown after SQLite's) =="; \
		PROTOCOLS_TEST_DB=postgres $(BIN)/pytest -o cache_dir=.pytest_cache/postgres --basetemp="$$basetemp" \
			$(PYTEST_ARGS) >"$$log" 2>&1 & postgres=$$!; \
		trap 'kill $$postgres 2>/dev/null; wait $$postgres' INT TERM; \
		$(BIN)/pytest $(PYTEST_ARGS); sqlite_rc=$$?; \
		wait $$postgres; postgres_rc=$$?; \
		echo "== PostgreSQL leg =="; cat "$$log"; rm -rf "$$log" "$$basetemp"; \
		echo "== SQLite leg: exit $$sqlite_rc; PostgreSQL leg: exit $$postgres_rc =="; \
		[ $$sqlite_rc -eq 0 ] && [ $$postgres_rc -eq 0 ]; \
	else \
		$(BIN)/pytest $(PYTEST_ARGS); sqlite_rc=$$?; \
		echo "PostgreSQL leg not run: set PROTOCOLS_TEST_POSTGRES_URL (CI=true makes it required)"; \
		exit $$sqlite_rc; \
	fi

test-sqlite: venv
	$(BIN)/pytest $(PYTEST_ARGS)

test-postgres: venv
	PROTOCOLS_TEST_DB=postgres $(BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check api schemas protocols tests bench migrations gunicorn.conf.py
	$(BIN)/mypy

## make fuzz: the long contract-fuzzing and property run (10x the CI budget), on both databases when
## PostgreSQL is configured; figures land in var/reliability-figures.json (see docs/reliability.md)
FUZZ_ENV := FUZZ_EXAMPLES=300 FUZZ_STATEFUL=250 PROPERTY_EXAMPLES=400
fuzz: venv
	$(FUZZ_ENV) $(BIN)/pytest -q tests/reliability/test_fuzz_contract.py tests/reliability/test_properties.py
	@if [ -n "$$PROTOCOLS_TEST_POSTGRES_URL" ] || [ "$$CI" = "true" ]; then \
		PROTOCOLS_TEST_DB=postgres $(FUZZ_ENV) $(BIN)/pytest -q tests/reliability/test_fuzz_contract.py \
			tests/reliability/test_properties.py; \
	fi
	$(BIN)/python -m tests.reliability.figures

## make reliability: the reliability suite alone (real servers, faults, hostile input), then its figures
reliability: venv
	$(BIN)/pytest -q tests/reliability
	$(BIN)/python -m tests.reliability.figures

## make bench: the performance harness against same-run baselines (~15 min, SQLite + PostgreSQL);
## table in docs/performance.md, raw JSON in bench/results/
bench: venv wrk
	$(BIN)/python bench/run.py --update-docs $(BENCH_ARGS)

wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update && apt-get install -y wrk; } \
	  || { echo "make: wrk is needed (the benchmark and its smoke test in make test drive the app with it);" \
	       "install it as root: apt-get install wrk (Debian/Ubuntu), or your system's package" >&2; exit 1; }

## make openapi: regenerate openapi.yaml from the app (a test fails when it drifts)
openapi: venv
	$(BIN)/flask openapi write --format=yaml openapi.yaml

## make clean: the virtualenv and tool caches. Not var/: it holds the default SQLite database, whose history
## (versions, keys, audit log) is not a build product (found by an operations probe).
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
