# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-fast bench bench-quick bench-zoo bench-mobilenetv2-peers lint clean

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
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -ra

test-fast: install
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -m "not slow"

bench: install
	$(PY) -m bench

bench-quick: install
	$(PY) -m bench --quick

# The model zoo (issue 19) is a part of its own: 30-45 minutes on 2 cores, and its speed,
# memory and int8-SQNR probes (zoo-speed) about 20 more. It rewrites
# docs/models.md; its section goes to bench/out/BENCHMARKS.zoo.md.
bench-zoo: install
	$(PY) -m bench --only zoo zoo-speed --out bench/out/BENCHMARKS.zoo.md

# TFMOT vs ours on the trained MobileNetV2 (issue 20): 10-12 minutes, a part of its own.
bench-mobilenetv2-peers: install
	$(PY) -m bench --only tfmot-mobilenetv2 --out bench/out/BENCHMARKS.tfmot-mobilenetv2.md

lint: install
	$(VENV)/bin/ruff check compress tests bench

clean:
	rm -rf $(VENV) build *.egg-info compress-demo bench/out
