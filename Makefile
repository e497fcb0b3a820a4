# The two commands of the README. Both set up everything themselves on a fresh machine:
# a virtualenv in .venv with the project and its test extras, and (for `test`) the
# HAPI FHIR test server build and other test data, via tests/servers/setup.sh.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[tests,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fhir-spine extract

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: $(STAMP)
	bash tests/setup.sh
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

# Issue 16's benchmark, every point in one run (numbers printed, never asserted): its own
# virtualenv with the extra `bench` (the peers FHIR-PYrate and fhiry, which are not
# dependencies), the Synthea corpus unpacked once, then points 1-3 and point 4 (REST, which
# starts and stops the HAPI test server). See benchmarks/README.md.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
SYNTHEA_TAR ?= ../shared/data/synthea-r4-589-bundles.tar.gz
BENCH_DIR ?= /tmp/fhir-spine-bench

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	mkdir -p $(BENCH_DIR)/synthea
	test -d $(BENCH_DIR)/synthea/SYNTHEA || tar -xzf $(SYNTHEA_TAR) -C $(BENCH_DIR)/synthea
	$(BENCH_VENV)/bin/python benchmarks/bench_speed.py --synthea $(BENCH_DIR)/synthea/SYNTHEA \
		$(BENCH_SPEED_ARGS)
	$(BENCH_VENV)/bin/python benchmarks/bench_rest.py $(BENCH_REST_ARGS)
