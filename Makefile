# Two commands a new user needs: `make main` (set up, then the main job) and `make test`.
# `make distributed` adds TorchRec for the sharded item table (docs/distributed.md); `make test`
# installs it too, so that the sharded tests run rather than skip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup distributed main test clean

$(BIN)/causalgr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/causalgr

# TorchRec's own requirement is the CUDA build of fbgemm-gpu: the CPU build goes in first (with the
# extra's other packages), then torchrec without its requirements. torch==2.13.0 is named in each
# step so that pip never replaces it.
$(VENV)/.distributed: $(BIN)/causalgr
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[dev,distributed]'
	$(BIN)/pip install --quiet --no-deps torch==2.13.0 torchrec==1.9.2
	touch $@

distributed: $(VENV)/.distributed

main: setup
	bash scripts/main.sh

test: distributed
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs
