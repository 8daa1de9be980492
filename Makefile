# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m llmjax.demo --workdir=$(DEMO_DIR)

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check llmjax tests experiments

bench: $(VENV)/.installed
	$(PY) experiments/bench/data_pipeline.py
	$(PY) experiments/bench/train_step.py

clean:
	rm -rf $(VENV) $(DEMO_DIR)
