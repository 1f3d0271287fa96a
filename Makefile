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

.PHONY: help venv demo test test-fast bench lint clean

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

test: $(BIN)/.stamp-test  ## run the whole test suite
	$(BIN)/python -m pytest -q -ra; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: $(BIN)/.stamp-test  ## tests without slow/kafka/s3/gpu markers
	$(BIN)/python -m pytest -q -ra -m "not slow and not kafka and not s3 and not gpu"

lint: $(BIN)/.stamp-test  ## ruff
	$(BIN)/ruff check dfp_ray tests benchmarks

bench: $(BIN)/.stamp-test  ## benchmarks (prints figures and ratios)
	$(BIN)/python benchmarks/run_all.py $(BENCH)

clean:
	rm -rf $(VENV) .venv-bench demo_output .dfp_ray
