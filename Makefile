# Every target sets up .venv on its own, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# olol needs Python 3.11 or newer (tomllib, typing): say so before anything is installed.
PY_CHECK = $(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
	"olol needs Python 3.11 or newer; $(PY) is " + sys.version.split()[0] + \
	": run make with PY=python3.11 (or newer)")'

.PHONY: run test test-slow bench lint protos protos-check clean

# `make run` needs only olol itself; the tests also need the dev tools and clients.
$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY_CHECK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY_CHECK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/olol up

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

bench: $(STAMP)
	$(BIN)/python -m tests.bench

lint: $(STAMP)
	$(BIN)/ruff check olol tests
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python -m olol.rpc.codegen

protos-check: $(STAMP)
	$(BIN)/python -m olol.rpc.codegen --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
