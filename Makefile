# Every target creates .venv if it is missing and installs into it only when pyproject.toml changed
# (a stamp file per set of extras, newer than pyproject.toml, records a finished install).
# The package is installed editable, so source edits need no reinstall.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?= -q -n 2 --dist loadgroup

STAMP_BASE := $(VENV)/.installed-base
STAMP_TEST := $(VENV)/.installed-test-parity

.PHONY: demo test bench lint clean venv

demo: $(STAMP_BASE)
	$(VENV)/bin/ar1 demo --out out/demo

test: $(STAMP_TEST)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP_BASE)
	$(VENV)/bin/ar1 bench all --out out/bench

lint: $(PY)
	$(PY) -m compileall -q ar1_jax kernels configs tests

clean:
	rm -rf out build dist .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP_BASE): pyproject.toml | $(PY)
	$(PIP) install -q --no-compile -e .
	touch $@

# torch==2.13.0 is pinned in the `parity` extra (a local CPU wheel); test + parity is a superset
# of the base install, so it refreshes the base stamp too.
$(STAMP_TEST): pyproject.toml | $(PY)
	$(PIP) install -q --no-compile -e '.[test,parity]'
	touch $@ $(STAMP_BASE)
