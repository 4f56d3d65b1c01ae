# The two commands: `make run` and `make test`. Each creates .venv when it is missing or older than
# pyproject.toml, installs the project into it, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-offline browser pgbouncer fuzz cluster-test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Intake needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev,bench,semantic,local-ai]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/intake run

# The suite in two steps: every test but the timing ones over two processes (pytest-xdist; each runs embedded
# services of its own, see tests/conftest.py), then the timing tests alone, so that the suite's own servers and
# workers do not skew what they measure.
test: $(STAMP) browser pgbouncer
	$(BIN)/python -m pytest -n 2 -m "not timing"
	$(BIN)/python -m pytest -m timing

# The tests that need no services (channel adapters, normalization, the error policy, the layout): a change to a
# channel adapter is tried in a few minutes, without the fleet.
test-offline: $(STAMP)
	$(BIN)/python -m pytest -m offline

# The console's browser tests drive Debian's Chromium: installed here when missing and the machine allows
# (root with apt-get); otherwise those tests skip with the reason (and fail under CI=true).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is missing and cannot be installed here: the console's browser tests will be skipped"

# The PgBouncer test (tests/deployment/test_pgbouncer.py) starts Debian's pgbouncer in front of the embedded PostgreSQL:
# installed here when missing and the machine allows; otherwise that test skips with the reason (fails under CI=true).
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } || \
	  echo "pgbouncer is missing and cannot be installed here: the PgBouncer tests will be skipped"

# The fuzz targets with many more examples than `make test` runs (see the README's Development section).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -m fuzz --timeout=0 tests/channels/test_fuzz.py tests/ingress/test_ingress_fuzz.py

# Machines that die (tests/cluster_machines.py; about four minutes, root): two fleet machines running every role
# in network namespaces over real TCP; in one run a machine dies, Redis fails over and PostgreSQL restarts, and
# the books must balance. On demand only: not part of `make test`.
cluster-test: $(STAMP) pgbouncer
	$(BIN)/python -m pytest -p no:cacheprovider -s --timeout=900 tests/cluster_machines.py

lint: $(STAMP)
	$(BIN)/ruff check config db pipelines workers tests
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/intake bench

clean:
	rm -rf $(VENV) .intake-test .pytest_cache
