# numpyro_si developer commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-bench demo test test-all test-min lint bench docs docs-serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

install: $(STAMP)

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m pip install --quiet --no-deps sbibm
	touch $(BENCH_STAMP)

install-bench: $(BENCH_STAMP)

demo: install
	$(PY) examples/demo.py

# Fast suite (< 15 min on 2 cores); slow statistical tests are marked `slow`. The property-based
# tests (tests/test_properties.py) run a few examples each here and ten times as many in test-all.
# `--dist worksteal` rebalances the two workers near the end, where one long test would otherwise
# run alone.
test: install
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15

test-all: install
	NSI_HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q -n 2 --dist worksteal -m ""

# Fresh .venv-min on the dependency floors of pyproject.toml (.ci/min-constraints.txt): smoke check
# and a fast test subset.
test-min:
	bash .ci/test-min

lint: install
	$(VENV)/bin/ruff check .

# Measured comparisons against peers (flowjax, flowMC, NumPyro); results go to docs/benchmarks.md.
bench: install-bench
	$(PY) benchmarks/density.py
	$(PY) benchmarks/mcmc.py
	$(PY) benchmarks/priors.py
	$(PY) benchmarks/no_draws.py
	$(PY) benchmarks/global_move.py
	$(PY) benchmarks/scaling.py

# The documentation site, built into site/ (a warning fails the build; the pages' code runs).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) demo_output .pytest_cache site
