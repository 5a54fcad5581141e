# The two commands of the README's quick start, each self-contained on a fresh machine:
#   make run    set up .venv and run the whole workflow on the embedded default
#   make test   set up .venv and run the test suite
# and, after `make run`, `make report` writes report.html.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: run report test test-fast env clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: env
	$(BIN)/snakemake --cores $(CORES) all
	@$(BIN)/python -m astropt.summary results/summary.md

# After `make run`: every figure with its caption and the summary in one HTML file.
report: env
	$(BIN)/snakemake --report report.html

test: env
	$(BIN)/python -m pytest --durations=20

test-fast: env
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf results resources logs .snakemake report.html
