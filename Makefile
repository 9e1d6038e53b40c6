# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-fast bench bench-quick bench-zoo bench-zoo-1 bench-zoo-2 bench-zoo-3 bench-zoo-speed bench-mobilenetv2-peers lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/compress demo --force

# 2 workers on 2 cores. Tried on 2026-11-29: 3 workers took 996 s once against 1031 s, but
# 1072 s and 1104 s on the next trees; the quick bench's children then share the cores with
# three workers (the bench test took 609 s against 393 s).
test: install
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -ra

test-fast: install
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -m "not slow"

bench: install
	$(PY) -m bench

bench-quick: install
	$(PY) -m bench --quick

# The model zoo (issue 19), parts of their own outside `make bench`: 17 passes on 31 cases,
# 2-3 hours on 2 cores in all (estimated from the cases run so far), split into three parts
# of under an hour each, plus its speed, memory and int8-SQNR probes (zoo-speed, about 20
# minutes). Each part updates its rows of docs/models.json and re-renders docs/models.md.
ZOO_PART1 = Subclassed,TwoInput,TwoOutput,CustomLayer,MixedFloat16,TextRNN,Signal1D,Video,Siamese,TextVectorize,Tabular,TransferNest,MobileNet,MobileNetV3Small,MobileNetV2,MobileNetV3Large,BertTextClassifier,GPT2Backbone,LlamaBackbone,ViTImageClassifier,EfficientNetB0,EfficientNetV2B0
ZOO_PART2 = NASNetMobile,DenseNet121,ResNet50V2,ResNet50,VGG16
ZOO_PART3 = InceptionV3,Xception,ConvNeXtTiny,InceptionResNetV2
bench-zoo: bench-zoo-1 bench-zoo-2 bench-zoo-3 bench-zoo-speed

bench-zoo-1 bench-zoo-2 bench-zoo-3: install
	ZOO_FAMILIES=$(ZOO_PART$(subst bench-zoo-,,$@)) $(PY) -m bench --only zoo --out bench/out/BENCHMARKS.$@.md

bench-zoo-speed: install
	$(PY) -m bench --only zoo-speed --out bench/out/BENCHMARKS.zoo-speed.md

# TFMOT vs ours on the trained MobileNetV2 (issue 20): 10-12 minutes, a part of its own.
bench-mobilenetv2-peers: install
	$(PY) -m bench --only tfmot-mobilenetv2 --out bench/out/BENCHMARKS.tfmot-mobilenetv2.md

lint: install
	$(VENV)/bin/ruff check compress tests bench

clean:
	rm -rf $(VENV) build *.egg-info compress-demo bench/out
