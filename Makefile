# Set-up and the main jobs. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned for the set-up only (the package itself declares ranges); override
# e.g. `make demo TORCH="torch torchvision"` to take what your platform's index serves.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench bench-gpu install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/kdlens demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2

$(VENV)/.installed-bench: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

# Regenerates docs/BENCHMARKS.md: the speed tables (several minutes on 2 CPU cores) and the result
# tables (a few CPU-hours; trained runs and teachers are kept in runs/benchmarks/ and reused).
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/explainers.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/tables.py configs/benchmarks/fashion_mnist.yaml
	$(BIN)/python benchmarks/tables.py configs/benchmarks/shortcut.yaml
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bcos_recipe.py
	$(BIN)/python benchmarks/tables.py configs/benchmarks/shortcut_bcos.yaml
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/training_cost.py configs/benchmarks/shortcut.yaml
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/training_cost.py configs/benchmarks/shortcut_bcos.yaml
	$(BIN)/python benchmarks/collect.py

# On a machine with a CUDA GPU: the CUDA tests, then the speed benchmarks and the precision table on
# it, as *_cuda.md parts beside the CPU ones.
bench-gpu: $(VENV)/.installed-bench
	$(BIN)/python -m pytest -q tests/test_cuda.py
	$(BIN)/python benchmarks/training.py --device cuda --out docs/benchmarks/training_cuda.md
	$(BIN)/python benchmarks/explainers.py --device cuda --out docs/benchmarks/explainers_cuda.md
	$(BIN)/python benchmarks/metrics.py --device cuda --e2e-n 64 --out docs/benchmarks/metrics_cuda.md
	$(BIN)/python benchmarks/metrics.py --device cuda --only-end-to-end --e2e-n 64 --sweep-precision bfloat16 --out docs/benchmarks/metrics_cuda_bfloat16.md
	$(BIN)/python benchmarks/precision.py --device cuda --out docs/benchmarks/precision_cuda.md
	$(BIN)/python benchmarks/collect.py

clean:
	rm -rf $(VENV) runs
