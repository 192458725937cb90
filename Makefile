# extrap — the two commands a new user needs are `make demo` and `make test`.
# Everything is installed into .venv by `make install` (run by both).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines get the pinned CPU wheel; with an NVIDIA driver, any torch >= 2.4 (a CUDA build).
TORCH  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4,torch==2.13.0)
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

# The paper's tables and figures: make reproduce-table1 [SCALE=paper|smoke] [WORKERS=K]
# [ENGINE=auto|processes|horovod|virtual|single] [DATA_DIR=DIR] [OUT=DIR] [LAUNCH="mpirun -np 16 ..."]
ITEMS    := $(sort $(basename $(notdir $(wildcard reproduce/configs/*.yaml))))  # one per config
SCALE    ?= paper
OUT      ?= runs/$(SCALE)
WORKERS  ?=
ENGINE   ?=
DATA_DIR ?=
# ENGINE=processes starts one rank per worker with the .venv's mpirun unless LAUNCH says how
# (a hostfile on a cluster: LAUNCH="mpirun -np 16 --hostfile hosts"); root needs Open MPI's flag.
# ENGINE=horovod starts them with horovodrun --gloo (after `make install-horovod`).
MPI_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-run-as-root)
NP        = $(or $(WORKERS),16)
LAUNCH   ?= $(if $(filter processes,$(ENGINE)),$(VENV)/bin/mpirun $(MPI_FLAGS) -np $(NP)) \
            $(if $(filter horovod,$(ENGINE)),$(VENV)/bin/horovodrun --gloo -np $(NP) -H localhost:$(NP))
ITEM_ARGS = --scale $(SCALE) --out $(OUT) $(if $(WORKERS),--workers $(WORKERS)) \
            $(if $(ENGINE),--engine $(ENGINE)) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# Kubernetes (k8s/): manifests generated from reproduce/configs and k8s/settings.yaml; the image
# named there, built from k8s/Dockerfile (needs a Docker engine).
IMAGE    = $(shell sed -n 's/^image: *//p' k8s/settings.yaml)

.PHONY: install install-horovod demo test bench clean help tables reproduce-all k8s image $(addprefix reproduce-,$(ITEMS))

help:
	@echo "make demo     the main job: SGD vs extrap-SGD vs SmoothOut on digits, 4 MPI workers (-> $(DEMO_OUT))"
	@echo "make test     the test suite"
	@echo "make bench    measure extrap's costs side by side -> docs/bench.{md,json} (BENCH_ARGS=--tiny)"
	@echo "make install  create $(VENV) with torch ($(TORCH)), Open MPI + mpi4py, and this project"
	@echo "make install-horovod   build Horovod 0.28.1 into $(VENV) (~3 min) for ENGINE=horovod"
	@echo "make reproduce-table1 ... reproduce-figure7, reproduce-all   a paper item (SCALE=paper|laptop|smoke, -> $(OUT))"
	@echo "make tables   rebuild tables and figures from $(OUT)/records.jsonl"
	@echo "make k8s      regenerate k8s/ manifests from the configs and k8s/settings.yaml"
	@echo "make image    docker build -f k8s/Dockerfile -t $(IMAGE) ."
	@echo "make clean    remove $(VENV) and runs/"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[suite,mpi,dev]"
	@touch $@

install-horovod: $(VENV)/.horovod

$(VENV)/.horovod: $(VENV)/.installed scripts/install-horovod.sh
	bash scripts/install-horovod.sh $(PY)
	@touch $@

demo: install
	$(PY) -m reproduce.demo --out $(DEMO_OUT)

$(addprefix reproduce-,$(ITEMS)): reproduce-%: install
	$(LAUNCH) $(PY) -m reproduce.$* $(ITEM_ARGS)
	$(PY) -m results $(OUT)

reproduce-all: $(addprefix reproduce-,$(ITEMS))

tables: install
	$(PY) -m results $(OUT)

k8s: install
	$(PY) -m k8s.generate

image:
	docker build -f k8s/Dockerfile --build-arg GIT_COMMIT=$$(git rev-parse HEAD) -t $(IMAGE) .

test: install
	$(PY) -m pytest -q --durations=30 $(PYTEST_ARGS)

BENCH_ARGS ?=
bench: install
	$(PY) -m reproduce.bench --out docs $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
