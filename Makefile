# mfe-iqa: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Threads per torch process: the 2-core CI machine runs best with 2.
export OMP_NUM_THREADS ?= 2
export WANDB_SILENT ?= true

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev,sweep,slurm]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with the dev, sweep and slurm extras

train: $(STAMP) ## The main job on the embedded demo: DAN pre-training, multi-task IQA training, test (CPU, < 15 min)
	$(VENV)/bin/mfe-iqa-train experiment=demo

test: $(STAMP) ## Run the test suite (CPU, tiny configs)
	$(PY) -m pytest -q -p no:cacheprovider -n $(or $(TEST_WORKERS),2) --dist loadfile tests

bench-livec: $(STAMP) ## plain vs no_hfen vs no_dan vs full MFENet-tiny on the LIVE Challenge sample, one table (BUDGET_MIN=20 min of fit per model, SPLIT=0, OVERRIDES='...' for every run)
	$(PY) -m mfe_iqa.cli.livec_table --budget-min $(or $(BUDGET_MIN),20) --split-index $(or $(SPLIT),0) $(if $(OVERRIDES),-- $(OVERRIDES))

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: $(STAMP) ## ruff format the code
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

clean: ## Remove the venv, caches, logs and generated demo data
	rm -rf $(VENV) .pytest_cache .ruff_cache logs data/demo build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install train test bench-livec lint format clean
