# duat: the two commands of the README, and a few helpers.
#   make lab   - JupyterLab on notebooks/ (creates .venv on first use)
#   make test  - unit tests + every notebook under pytest --nbval (also with other CPU kernels)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.duat-installed
PORT   ?= 8888

.PHONY: lab test venv lint unit notebooks notebooks-other-cpus bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

# Jupyter refuses to run as root unless told; containers and CI images often are root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(LAB_FLAGS)

# CPU kernels other than this machine's own. A notebook's compared outputs may depend only
# on what every machine computes alike, so the notebooks must also pass with the scalar
# kernels (on any CPU) and one thread, and with the AVX2 kernels where the CPU has AVX2.
SCALAR_KERNELS := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=1
AVX2_KERNELS   := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
HAS_AVX2       := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo yes)

# The layering of pyproject.toml's [tool.importlinter]: imports point down only, no circles.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache

# Quick profile for tests (the notebooks read DUAT_PROFILE; 'full' is opt-in).
test: lint
	DUAT_PROFILE=quick $(BIN)/python -m pytest --nbval tests notebooks
	$(MAKE) --no-print-directory notebooks-other-cpus

# The notebooks again, as a machine with other CPU kernels would run them.
notebooks-other-cpus: $(STAMP)
	@echo "== notebooks with the scalar CPU kernels, 1 thread"
	$(SCALAR_KERNELS) DUAT_PROFILE=quick $(BIN)/python -m pytest --nbval -q notebooks
ifeq ($(HAS_AVX2),yes)
	@echo "== notebooks with the AVX2 CPU kernels"
	$(AVX2_KERNELS) DUAT_PROFILE=quick $(BIN)/python -m pytest --nbval -q notebooks
endif

unit: $(STAMP)
	$(BIN)/python -m pytest tests

notebooks: $(STAMP)
	DUAT_PROFILE=quick $(BIN)/python -m pytest --nbval notebooks

clean-venv:
	rm -rf $(VENV)
