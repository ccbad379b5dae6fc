# The two commands of the README: `make demo` (train on the embedded MNIST, write pictures)
# and `make test`. Both install what they need first, into the active virtual environment or,
# when none is active, into a project one at .venv/ (stock Debian/Ubuntu Pythons refuse
# `pip install` into the system interpreter, PEP 668).
# Versions of the test and lint tools are pinned in constraints.txt (how to upgrade: see there).
ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
else
PY := .venv/bin/python
endif
PIP = $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: install install-dev demo test lint

$(PY):
	@echo "creating the project virtual environment .venv/ (python3 -m venv)"
	@python3 -m venv .venv || { rm -rf .venv; echo "make: python3 -m venv failed; on Debian/Ubuntu install \
	the venv module first (sudo apt-get install python3-venv), then run make again" >&2; exit 1; }

install: $(PY)
	$(PIP) torch==2.13.0
	$(PIP) -e .
	$(PIP) --no-deps digit-recognizer-py

install-dev: install
	$(PIP) -e ".[dev]"

demo: install
	@echo "make demo: trains the default model for about 10 minutes on 2 CPU cores, then writes demo/"
	$(PY) -m difflab demo --out demo

lint: install-dev
	$(PY) -m ruff check src tests benchmarks

# DIFFLAB_STRICT_SKIPS=1: a skipped test fails the run unless its reason is on the allow-list in
# tests/conftest.py (CI must not pass by skipping).
test: lint
	DIFFLAB_STRICT_SKIPS=1 $(PY) -m pytest -rs; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status
