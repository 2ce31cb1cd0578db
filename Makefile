# make setup | make train | make test   (see README.md)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/default
ARGS ?=

.PHONY: setup train test lint data clean-data

setup: $(STAMP)

# Re-run only when the pins change: a second `make setup` is a no-op.
$(STAMP): requirements/cpu.txt setup.cfg third_party/fbgemm_gpu_cpu_alias/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements/cpu.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The embedded default dataset, built once (the job skips itself when it is up to date).
data: setup
	$(PY) -m data_prep default --out $(DATA)

# The main job, exactly as a user runs it: TorchX, local scheduler, 2 gloo workers
# (defaults in .torchxconfig). Extra trainer arguments: make train ARGS="--model ta".
train: data
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/torchx run launch/train.py:train -- --data $(DATA) $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
