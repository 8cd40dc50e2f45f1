# Two commands for a newcomer: `make demo` and `make test` (both create .venv and install what they need).
PYTHON ?= python3
VENV ?= .venv
# Which torch to install; CI uses torch==2.13.0 (the CPU build on its disk). 2.9.* is excluded by pyproject.
TORCH_SPEC ?= torch
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint benchmarks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, alone, so that no other requirement picks a different (CUDA) build of it
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[test,onnx,cluster]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m unetseg demo --out demo-output

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

benchmarks: $(STAMP)
	$(PY) benchmarks/param_counts.py
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
