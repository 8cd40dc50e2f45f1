# Two commands for a newcomer: `make demo` and `make test` (both create .venv and install what they need).
PYTHON ?= python3
VENV ?= .venv
# Which torch to install; CI uses torch==2.13.0 (the CPU build on its disk). 2.9.* is excluded by pyproject.
TORCH_SPEC ?= torch
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint benchmarks clean

$(STAMP): pyproject.toml Testing/requirements-nnunet.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, alone, so that no other requirement picks a different (CUDA) build of it
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[test,onnx,cluster]"
	# imported nnU-Net models build their networks with dynamic-network-architectures; --no-deps: it declares timm,
	# which pulls torchvision (a CUDA build) and may replace torch, yet its U-Nets never import timm
	$(PY) -m pip install --no-deps dynamic-network-architectures==0.4.4
	# ONNX Runtime's OpenVINO build installs in place of onnxruntime: set aside for the tests that run the ONNX path
	# through its OpenVINO provider in a child process (its dependencies are onnxruntime's, already here)
	$(PY) -m pip install --no-deps --target $(VENV)/ort-openvino onnxruntime-openvino==1.24.1
	# the real nnU-Net for the parity tests and benchmarks: its requirements under the installed torch, then itself
	$(PY) -m pip freeze | grep -i '^torch==' > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -c $(VENV)/torch-constraint.txt -r Testing/requirements-nnunet.txt
	$(PY) -m pip install --no-deps nnunetv2==2.8.1
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
