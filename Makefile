# make test / make demo: create or reuse .venv, install what is missing, then run.
# A second run installs nothing: the install is redone only when pyproject.toml changes.
#
# torch is installed first and on its own so that pip never resolves it from the default
# index (PyPI's Linux wheel is a multi-GB CUDA build). On the development machine
# `torch==2.13.0` resolves to the local CPU wheel. Elsewhere pick a wheel index, e.g.
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128   (CUDA 12.8 GPUs)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
# The notebooks extra: tests/test_notebooks.py runs every notebook with papermill.
EXTRAS ?= dev,notebooks
STAMP := $(VENV)/.installed-$(EXTRAS)
DATA ?= data/shapes

.PHONY: install test demo bench converged lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(if $(findstring notebooks,$(EXTRAS)),$(PY) -m ipykernel install --sys-prefix --name detrdistill --display-name "Python (detrdistill)")
	@$(PY) -c "import torch; assert 'torchvision' not in __import__('sys').modules; print('torch', torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check detrdistill tests benchmarks notebooks

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/detrdistill demo --data $(DATA) --out runs/demo

# make notebooks: run notebooks/0*.ipynb in place at their default (CPU) size, reusing make demo's
# and the presets' runs, and keep their outputs (a notebook that fails is left as it was).
.PHONY: notebooks
notebooks: $(STAMP)
	$(VENV)/bin/detrdistill notebooks notebooks/[0-9][0-9]_*.ipynb

# make figures: every analysis figure as PNG into figures/, from `make demo`'s runs (inference,
# plus two one-epoch students for Fig. 7, trained into runs/analysis/ the first time).
FIGURE_RUNS ?= runs/demo
.PHONY: figures
figures: $(STAMP)
	$(VENV)/bin/detrdistill figures --data $(DATA) --teacher $(FIGURE_RUNS)/teacher --student $(FIGURE_RUNS)/student \
		--distilled $(FIGURE_RUNS)/distilled --epoch-run runs/analysis/student_1epoch \
		--ad-run runs/analysis/student_1epoch_ad --out figures

# make bench SUITE=main [QUICK=1]: one benchmark suite (detrdistill/bench/suites.py).
SUITE ?= main
bench: $(STAMP)
	$(VENV)/bin/detrdistill bench $(SUITE) --data $(DATA)$(if $(QUICK), --quick)

# make converged [FAMILIES="adamixer"]: the hours-long converged suite, resumable across machines:
# its teachers live in benchmarks/teachers and every finished run is committed as it finishes.
converged: $(STAMP)
	$(VENV)/bin/detrdistill bench converged --data $(DATA) --teachers benchmarks/teachers --commit$(if $(FAMILIES), --families $(FAMILIES))

clean-venv:
	rm -rf $(VENV)
