# Every target creates .venv if it is missing and installs into it only when pyproject.toml changed
# (a stamp file per set of extras, newer than pyproject.toml, records a finished install).
# The package is installed editable, so source edits need no reinstall.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?= -q -n 2 --dist loadgroup
# Python writes bytecode on first import even where the environment says not to
# (PYTHONDONTWRITEBYTECODE=1, common in CI images): the install skips compiling every installed file
# (--no-compile: most are never imported), so without this every process - each test worker, each
# subprocess a test starts, each demo stage - recompiled jax, flax and the rest from source (~3 s each).
RUN := env -u PYTHONDONTWRITEBYTECODE

STAMP_BASE := $(VENV)/.installed-base
STAMP_TEST := $(VENV)/.installed-test-parity

.PHONY: demo test bench lint clean venv

demo: $(STAMP_BASE)
	$(RUN) $(VENV)/bin/ar1 demo --out out/demo

test: $(STAMP_TEST)
	$(RUN) $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP_BASE)
	$(RUN) $(VENV)/bin/ar1 bench all --out out/bench

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
