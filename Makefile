# Two commands from a fresh clone: `make demo` and `make test`. Both make .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch for the training tests; 2.13.0 is a CPU build this CI machine has on disk (an unpinned torch
# would pull a multi-GB CUDA build). On a Mac or a CUDA box: make TORCH=torch (see README).
TORCH  ?= torch==2.13.0

.PHONY: demo test bench clean

$(STAMP): pyproject.toml examples/imagefilter/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' '$(TORCH)'
	$(BIN)/pip install --quiet -e examples/imagefilter  # the example plugin the tests run end to end
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/user-client demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py --readme

clean:
	rm -rf $(VENV) .pytest_cache
