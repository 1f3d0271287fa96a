# One entry point for humans and CI. Every target sets up what it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# CPU build by default. For CUDA: make venv TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=
export RAY_USAGE_STATS_ENABLED=0
# torch threads spin-wait by default; on a small shared machine that costs 10-30x (measured).
export OMP_WAIT_POLICY=PASSIVE

.PHONY: help venv demo test test-fast bench lint clean postgres-setup

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/.stamp-base: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e . torch==$(TORCH_VERSION)
	touch $@

$(BIN)/.stamp-test: $(BIN)/.stamp-base
	$(BIN)/pip install -q -e '.[test]' torch==$(TORCH_VERSION)
	touch $@

venv: $(BIN)/.stamp-base  ## create .venv with torch $(TORCH_VERSION) and dfp_ray

demo: $(BIN)/.stamp-base  ## generate data, train, infer, evaluate (embedded defaults)
	$(BIN)/dfp-ray demo --out demo_output

# PostgreSQL for the tests marked `postgres` (a real registry database; tests/postgres_server.py
# finds the binaries): installed quietly with apt when missing and we can (root + apt-get),
# without creating or starting a default cluster. Otherwise those tests skip, saying why.
postgres-setup:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
	    || [ -n "$$DFP_PG_BIN" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "postgres-setup: installing PostgreSQL with apt-get for the postgres-marked tests"; \
	  mkdir -p /etc/postgresql-common; \
	  [ -e /etc/postgresql-common/createcluster.conf ] \
	    || echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql; } >/dev/null 2>&1 \
	    || echo "postgres-setup: apt-get could not install PostgreSQL; the postgres-marked tests will be skipped"; \
	else echo "postgres-setup: no PostgreSQL here (and no root apt-get); the postgres-marked tests will be skipped"; fi

test: $(BIN)/.stamp-test postgres-setup  ## run the whole test suite (TEST_ARGS=... passes pytest options)
	@rm -f $(VENV)/.pytest-status
	DFP_TEST_STATUS_FILE=$(VENV)/.pytest-status $(BIN)/python -X faulthandler -m pytest -q -ra --durations=25 $(TEST_ARGS); rc=$$?; \
	if [ $$rc -gt 128 ] && [ -s $(VENV)/.pytest-status ]; then \
	  echo "make test: pytest ended with status $$(cat $(VENV)/.pytest-status), then the interpreter was killed by signal $$((rc - 128)) while finalising (native teardown, see conftest.py); using pytest's status"; \
	  rc=$$(cat $(VENV)/.pytest-status); fi; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: $(BIN)/.stamp-test  ## tests without slow/kafka/s3/postgres/gpu markers
	$(BIN)/python -m pytest -q -ra -m "not slow and not kafka and not s3 and not postgres and not gpu"

lint: $(BIN)/.stamp-test  ## ruff
	$(BIN)/ruff check dfp_ray tests benchmarks

bench: $(BIN)/.stamp-test postgres-setup  ## benchmarks (prints figures and ratios)
	$(BIN)/python benchmarks/run_all.py $(BENCH)

clean:
	rm -rf $(VENV) .venv-bench demo_output .dfp_ray
