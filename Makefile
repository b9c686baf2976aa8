# The two commands a newcomer needs: `make train` (the embedded default run) and `make test`.
# Each creates .venv on first use: the CPU build of torch first, then the package with its extras,
# at exactly the versions in constraints.txt (the set the suite last passed with). `make test-latest`
# runs the suite on the newest releases instead; `make lock` does that and, if it passes, writes them
# to constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LATEST := .venv-latest
OLDEST := .venv-oldest
LOCK := constraints.txt
# torch comes from a local CPU wheel on our machines (a bare `torch` would pull a CUDA build of GBs)
TORCH := torch==2.13.0
EXTRAS := .[dev,tensorboard,deepspeed]

.PHONY: train test lint format test-latest test-oldest lock bench venv clean

# --no-build-isolation: the package is built by the pinned setuptools, not the newest one
$(BIN)/trainformers: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) pip setuptools
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet --no-build-isolation -c $(LOCK) -e "$(EXTRAS)"
	$(BIN)/pip check
	$(BIN)/python tools/lock.py check $(LOCK) $(VENV)
	touch $(BIN)/trainformers

venv: $(BIN)/trainformers

train: venv
	$(BIN)/trainformers train --training.overwrite_output_dir true  # replaces an earlier `make train` run

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# ruff (lint + format check) on everything, mypy on the package (allowlist in pyproject.toml); CI runs it
lint: venv
	$(BIN)/ruff check src tests tools bench examples
	$(BIN)/ruff format --check src tests tools bench examples
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix src tests tools bench examples
	$(BIN)/ruff format src tests tools bench examples

# Not in CI: a fresh environment with the newest releases the index has, then the whole suite.
# It prints which packages differ from constraints.txt before testing.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet $(TORCH)
	echo "$(TORCH)" > $(LATEST)/torch.txt  # everything newest but torch: eager upgrades would fetch a CUDA build
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -c $(LATEST)/torch.txt -e "$(EXTRAS)"
	$(LATEST)/bin/pip check
	$(LATEST)/bin/python tools/lock.py diff $(LOCK) $(LATEST)
	$(LATEST)/bin/python -m pytest -q -n 2 --dist loadgroup

# Not in CI: the suite at pyproject's lower bounds, so that the range it states stays true.
test-oldest:
	rm -rf $(OLDEST)
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet --upgrade pip
	$(OLDEST)/bin/pip install --quiet $(TORCH)
	$(OLDEST)/bin/python tools/lock.py floors $(OLDEST)/floors.txt $(OLDEST)
	$(OLDEST)/bin/pip install --quiet -c $(OLDEST)/floors.txt -e "$(EXTRAS)"
	$(OLDEST)/bin/pip check
	$(OLDEST)/bin/python -m pytest -q -n 2 --dist loadgroup

# Refresh the pinned set: the newest releases, kept only if the whole suite passes with them.
lock: test-latest
	$(LATEST)/bin/python tools/lock.py write $(LOCK) $(LATEST)

# the performance suite (bench/run_all.py): ~25 min on an idle machine, writes docs/benchmarks.md; not in CI
bench: venv
	$(BIN)/python bench/run_all.py

# issue 17's GPU check: on a CUDA machine every row in under 8 minutes, the table in gpu_check.md (ARGS:
# e.g. --out docs/x.md, --only ID). Not in CI, whose tests/test_gpu_check.py runs its CPU rows. No venv
# prerequisite: a GPU machine brings its own CUDA torch ($PYTHON, else .venv, else python3).
.PHONY: gpu-check
gpu-check:
	tools/gpu_check.sh $(ARGS)

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) runs out .pytest_cache
