# Two commands from a fresh clone (Python 3.11, no GPU, no network beyond PyPI):
#   make demo   set up .venv, train the packaged MiniLM on data/demo, write the submission
#   make test   set up .venv, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test setup clean bench

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
	$(BIN)/python train.py --config default data.dir=data/demo run_name=demo --overwrite
	$(BIN)/python inference.py --config default --saved_model demo data.dir=data/demo run_name=demo inference.output_path=output/demo.csv

test: setup
	# one worker per core, at most 4 (each holds torch and spawns training processes of its own)
	$(BIN)/python -m pytest -n auto --maxprocesses 4

clean:
	rm -rf saved_model output
