# Daily commands. `make demo` and `make test` do all set-up themselves on a fresh clone.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
TRIALS  ?=

.PHONY: demo test bench lint format ui lab notebooks clean-venv

# The environment: a venv with the package and the exact versions in requirements.lock.
# torch is pinned to 2.13.0, which this machine's pip takes as a CPU wheel from local disk.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev,notebooks]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)  ## the main job: an Optuna study of the MNIST CNN, tracked in mlruns/
	$(BIN)/workbench study experiments/mnist_cnn.yaml $(if $(TRIALS),--trials $(TRIALS))

test: $(STAMP)  ## the whole test suite (tiny configs; slow tests included)
	bash scripts/system-deps.sh
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

bench: $(STAMP)  ## benchmarks; results go to docs/benchmarks.md by hand, with machine and date
	$(BIN)/python bench/run_all.py

lint: $(STAMP)  ## ruff, and the import rules (import-linter contracts in pyproject.toml)
	$(BIN)/ruff check workbench tests bench
	$(BIN)/ruff format --check workbench tests bench
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format workbench tests bench
	$(BIN)/ruff check --fix workbench tests bench

ui: $(STAMP)  ## MLflow UI on :5000 and optuna-dashboard on :8080, both on 127.0.0.1
	$(BIN)/workbench ui --root mlruns

# JupyterLab serves 127.0.0.1 only, behind the token it generates (the URL with it is printed).
# Containers run as root, which Jupyter refuses unless allowed; they have no browser to open either.
AS_ROOT := $(if $(filter 0,$(shell id -u)),--ServerApp.allow_root=True --no-browser)

lab: $(STAMP)  ## JupyterLab on notebooks/; Launcher > Optuna Dashboard opens the study store in a tab
	@echo "Optuna Dashboard tab: storage sqlite:///$(CURDIR)/mlruns/optuna.db," \
	      "artifact path $(CURDIR)/mlruns/optuna-artifacts"
	$(BIN)/jupyter lab --ip 127.0.0.1 $(AS_ROOT) notebooks/

notebooks: $(STAMP)  ## run the notebooks at full size (against mlruns/) and keep their outputs
	$(BIN)/python scripts/run_notebooks.py

clean-venv:
	rm -rf $(VENV)
