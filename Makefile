# One entry point per job. `make test` builds ./.venv on first use (CPU PyTorch only).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0

.PHONY: venv test clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Install the pinned CPU build first so the resolver never pulls a CUDA wheel.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: venv
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) build src/*.egg-info
