# The two commands of the README:
#   make serve   set up a virtual environment for serving (no torch) and start the service
#   make test    set up the full environment (CPU torch, serving, test tools) and run every test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
ARGS ?=

.PHONY: serve test setup-serve setup-dev lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup-serve: $(BIN)/python
	$(BIN)/pip install -q -e '.[serve]'

# torch is pinned to the CPU build first, so pip does not pull a multi-GB CUDA build;
# GPU users install their own torch build before running this.
setup-dev: $(BIN)/python
	$(BIN)/pip install -q 'torch==2.13.0' || $(BIN)/pip install -q 'torch>=2.4'
	$(BIN)/pip install -q -e '.[serve,train,test]'

serve: setup-serve
	$(BIN)/python -m streamer --host $(HOST) --port $(PORT) $(ARGS)

test: setup-dev
	$(BIN)/python -m pytest -q -ra $(ARGS)

lint: setup-dev
	$(BIN)/ruff check trainer engines streamer bench tests
	$(BIN)/mypy

bench: setup-dev
	$(BIN)/python -m engines bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
