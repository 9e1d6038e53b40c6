# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-fast bench bench-quick lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/compress demo --force

test: install
	$(PY) -m pytest -n 2 --dist loadfile -q -ra

test-fast: install
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow"

bench: install
	$(PY) -m bench

bench-quick: install
	$(PY) -m bench --quick

lint: install
	$(VENV)/bin/ruff check compress tests bench

clean:
	rm -rf $(VENV) build *.egg-info compress-demo bench/out
