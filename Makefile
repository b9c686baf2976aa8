# The two commands a newcomer needs: `make train` (the embedded default run) and `make test`.
# Each creates .venv on first use: the CPU build of torch first, then the package with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test bench venv clean

$(BIN)/trainformers: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,tensorboard]"
	touch $(BIN)/trainformers

venv: $(BIN)/trainformers

train: venv
	$(BIN)/trainformers train

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# the performance suite (bench/run_all.py): ~25 min on an idle machine, writes docs/benchmarks.md; not in CI
bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs out .pytest_cache
