# The two commands a newcomer needs: `make lab` and `make test`.
# Both create the virtual environment in .venv first if it is missing or out of date.

PYTHON ?= python3
VENV   ?= .venv
# The local CPU build; an unpinned torch would pull gigabytes of CUDA packages.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
FIRST_CHAPTER := 1_foundations/01_transformers_from_scratch.ipynb
# Project settings for JupyterLab: no "Jupyter news?" prompt, no update check (we are offline).
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json

.PHONY: setup lab test chapters zoo

setup: $(VENV)/.installed $(LAB_SETTINGS)

$(VENV)/.installed: pyproject.toml
	@echo "Setting up $(VENV) (first time only; a few minutes)..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(LAB_SETTINGS): jupyterlab-overrides.json
	mkdir -p $(dir $@)
	cp $< $@

# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

# The learner works in workspace/ (git-ignored): copies of chapters/ that later updates never overwrite.
lab: setup
	$(BIN)/python -m mechlearn.workspace
	$(BIN)/jupyter lab $(ALLOW_ROOT) --ServerApp.root_dir=workspace --LabApp.default_url=/lab/tree/$(FIRST_CHAPTER)

test: setup
	$(BIN)/python -m pytest

chapters: setup
	$(BIN)/python -m mechlearn.course build

# Names of the zoo models to rebuild; empty rebuilds them all.
ZOO_MODELS ?=

zoo: setup
	$(BIN)/python -c "import sys; from mechlearn import zoo; [zoo.train(name) for name in sys.argv[1:] or zoo.list_models()]" $(ZOO_MODELS)
