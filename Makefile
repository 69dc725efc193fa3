# Two commands from a fresh clone (Python 3.11, no GPU, no network beyond PyPI):
#   make demo   set up .venv, train the packaged MiniLM on data/demo, write the submission
#   make test   set up .venv, run the whole test suite (what CI runs, after make lint)
# While editing:
#   make check  lint, then the unit tests (no training, no processes started): under a minute
#   make lint   ruff check and ruff format --check
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check lint setup clean bench

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned here: 2.13.0 is the CPU wheel; requirements.txt then keeps it (a range).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements-dev.txt
	# plaintune itself, editable and without dependencies, so `python -m plaintune.checkpoint` works.
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(BIN)/.installed

demo: setup
	# run_name=demo: the demo's own run, so it never replaces a run of yours named default
	$(BIN)/python train.py --config default data.dir=data/demo run_name=demo
	$(BIN)/python inference.py --config default --saved_model demo data.dir=data/demo run_name=demo

test: setup
	# one worker per core, at most 4 (each holds torch and spawns training processes of its own)
	$(BIN)/python -m pytest -n auto --maxprocesses 4

check: lint
	# the unit lane: the tests marked e2e (train, spawn, kill) and ddp (torchrun) are left to make test
	$(BIN)/python -m pytest -n auto --maxprocesses 4 -m "not e2e and not ddp"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf saved_model output
