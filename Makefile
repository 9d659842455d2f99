# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch build to install first. Here an offline CPU wheel of 2.13.0 is provided;
# elsewhere override, e.g. `make test TORCH_SPEC='torch==2.5.1'`.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Torch first, then the project under a constraints file holding that exact torch,
# so no dependency can upgrade or replace it (a newer torch would be a multi-GB CUDA build).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/polylens compare --setup x2 --json - --plot compare_x2.png --force
	$(BIN)/polylens compare --setup superposition --plot compare_superposition.png --force
	$(BIN)/polylens cluster --out digits-clusters --force
	$(BIN)/polylens cluster --model efficientnet-lite0 --out lite0-clusters --force

test: setup
	$(BIN)/python -m pytest -n 2 tests

bench: setup
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev,bench]"
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV)
