# duat: the two commands of the README, and a few helpers.
#   make lab   - JupyterLab on notebooks/ (creates .venv on first use)
#   make test  - unit tests + every notebook under pytest --nbval
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.duat-installed
PORT   ?= 8888

.PHONY: lab test venv unit notebooks bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

# Jupyter refuses to run as root unless told; containers and CI images often are root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(LAB_FLAGS)

# Quick profile for tests (the notebooks read DUAT_PROFILE; 'full' is opt-in).
test: $(STAMP)
	DUAT_PROFILE=quick $(BIN)/python -m pytest --nbval tests notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest tests

notebooks: $(STAMP)
	DUAT_PROFILE=quick $(BIN)/python -m pytest --nbval notebooks

clean-venv:
	rm -rf $(VENV)
