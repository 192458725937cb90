# extrap — the two commands a new user needs are `make demo` and `make test`.
# Everything is installed into .venv by `make install` (run by both).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines get the pinned CPU wheel; with an NVIDIA driver, any torch >= 2.4 (a CUDA build).
TORCH  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4,torch==2.13.0)
OUT    ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test clean help

help:
	@echo "make demo     the main job: SGD vs extrap-SGD vs SmoothOut on digits, 4 MPI workers (-> $(OUT))"
	@echo "make test     the test suite"
	@echo "make install  create $(VENV) with torch ($(TORCH)), Open MPI + mpi4py, and this project"
	@echo "make clean    remove $(VENV) and runs/"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[mpi,dev]"
	@touch $@

demo: install
	$(PY) -m reproduce.demo --out $(OUT)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
