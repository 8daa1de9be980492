# Two entry points: `make demo` and `make test`. Both create .venv on first use and install the
# exact versions (with hashes) pinned in requirements/lock*.txt; `make lock` refreshes the pins.
# --no-compile: no byte-compiling every installed file up front (measured: the dev install of a
# fresh venv 83 s with it); Python compiles what it imports, once.
# Python writes each module's bytecode on its first import, even where the environment says not
# to (this machine's image sets PYTHONDONTWRITEBYTECODE=1): with --no-compile that left no .pyc at
# all, and each of the ~200 Python processes of a test run compiled jax, flax, orbax and the rest
# from source again (measured: 3.3 s of CPU per process; a tiny `llmjax train` 7.5 s -> 5.1 s).
unexport PYTHONDONTWRITEBYTECODE
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo
LOCK := requirements/lock.txt
LOCK_DEV := requirements/lock-dev.txt
LOCK_TORCH := requirements/lock-torch.txt
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check --no-compile
COMPILE := --generate-hashes --allow-unsafe --strip-extras --all-build-deps \
	--no-emit-index-url --no-emit-find-links

.PHONY: demo test lint bench lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes --no-deps -r $(LOCK)
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed $(LOCK_DEV) $(LOCK_TORCH)
	$(PIP_INSTALL) --require-hashes --no-deps -r $(LOCK_DEV)
	$(PIP_INSTALL) --require-hashes --no-deps -r $(LOCK_TORCH) || echo "warning: no CPU torch \
	wheel reachable (see $(LOCK_TORCH)); tests/test_hf.py will skip"
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

# Re-resolve pyproject.toml's ranges to the newest allowed versions and pin them with hashes.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q pip-tools==7.6.2
	.venv-lock/bin/pip-compile -q $(COMPILE) -o $(LOCK) pyproject.toml
	.venv-lock/bin/pip-compile -q $(COMPILE) --extra dev -c $(LOCK) -o $(LOCK_DEV) pyproject.toml

clean:
	rm -rf $(VENV) .venv-lock $(DEMO_DIR)
