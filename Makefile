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
# [ARGS="epochs=1 seeds=3"] (the item's own settings and flags, as after `python -m reproduce.table1`)
ITEMS    := $(sort $(basename $(notdir $(wildcard reproduce/configs/*.yaml))))  # one per config
SCALE    ?= paper
OUT      ?= runs/$(SCALE)
WORKERS  ?=
ENGINE   ?=
DATA_DIR ?=
ARGS     ?=
# ENGINE=processes starts one rank per worker with the .venv's mpirun unless LAUNCH says how
# (a hostfile on a cluster: LAUNCH="mpirun -np 16 --hostfile hosts"); root needs Open MPI's flag.
# ENGINE=horovod starts them with horovodrun --gloo (after `make install-horovod`).
MPI_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-run-as-root)
NP        = $(or $(WORKERS),16)
LAUNCH   ?= $(if $(filter processes,$(ENGINE)),$(VENV)/bin/mpirun $(MPI_FLAGS) -np $(NP)) \
            $(if $(filter horovod,$(ENGINE)),$(VENV)/bin/horovodrun --gloo -np $(NP) -H localhost:$(NP))
# Every value given here, on the command line or in a file reaches the shell as literal
# arguments, never as shell code: q quotes one value as one argument, qw each of its words
# (LAUNCH: its words as written, quotes included; ARGS, PYTEST_ARGS and BENCH_ARGS, which may
# quote words, are split by scripts/exec_with_args.py). A $(...) on make's own command line is make's.
q  = '$(subst ','\'',$(1))'
qw = $(foreach w,$(1),$(call q,$(w)))
ITEM_ARGS = --scale $(call q,$(SCALE)) --out $(call q,$(OUT)) $(if $(WORKERS),--workers $(call q,$(WORKERS))) \
            $(if $(ENGINE),--engine $(call q,$(ENGINE))) $(if $(DATA_DIR),--data-dir $(call q,$(DATA_DIR)))

# Kubernetes (k8s/): manifests generated from reproduce/configs and k8s/settings.yaml; the image
# named there, built from k8s/Dockerfile (needs a Docker engine).
K8S_SETTINGS ?= k8s/settings.yaml
IMAGE    = $(if $(wildcard $(PY)),$(shell $(call q,$(PY)) -m k8s.generate --image --settings $(call q,$(K8S_SETTINGS))))

.PHONY: install install-horovod demo test bench docs clean help tables reproduce-all k8s image $(addprefix reproduce-,$(ITEMS))

help:
	@printf '%s\n' "make demo     the main job: SGD vs extrap-SGD vs SmoothOut on digits, 4 MPI workers (-> "$(call q,$(DEMO_OUT))")" \
	  "make test     the test suite" \
	  "make bench    run every benchmark in bench/, side by side -> docs/bench.{md,json} (BENCH_ARGS=--tiny)" \
	  "make docs     the documentation as a site -> site/ (MkDocs, strict: a dead link fails)" \
	  "make install  create "$(call q,$(VENV))" with torch ("$(call q,$(TORCH))"), Open MPI + mpi4py, and this project" \
	  "make install-horovod   build Horovod 0.28.1 into "$(call q,$(VENV))" (~3 min) for ENGINE=horovod" \
	  "make reproduce-table1 ... reproduce-figure7, reproduce-all   an item (SCALE=paper|laptop|smoke, ARGS='epochs=1 ...', -> "$(call q,$(OUT))")" \
	  "              SCALE=smoke: minutes on a laptop CPU (table1: 228 s on 2 cores); laptop: hours (figure1: 3.6 h);" \
	  "              paper (the default): the paper's protocol, for GPUs (table1 on 2 CPU cores: about 10 days; refused without a GPU unless ARGS=--cpu-ok)" \
	  "make tables   rebuild tables and figures from "$(call q,$(OUT))"/records.jsonl" \
	  "make k8s      regenerate k8s/ manifests from the configs and k8s/settings.yaml" \
	  "make image    docker build -f k8s/Dockerfile -t "$(call q,$(or $(IMAGE),<the image in k8s/settings.yaml>))" ." \
	  "make clean    remove "$(call q,$(VENV))", runs/ and site/"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(call q,$(PYTHON)) -m venv $(call q,$(VENV))
	$(call q,$(PY)) -m pip install --quiet $(call q,$(TORCH))
	$(call q,$(PY)) -m pip install --quiet -e ".[suite,mpi,dev]"
	@touch $@

install-horovod: $(VENV)/.horovod

$(VENV)/.horovod: $(VENV)/.installed scripts/install-horovod.sh
	bash scripts/install-horovod.sh $(call q,$(PY))
	@touch $@

demo: install
	$(call q,$(PY)) -m reproduce.demo --out $(call q,$(DEMO_OUT))

$(addprefix reproduce-,$(ITEMS)): reproduce-%: install
	$(call qw,$(LAUNCH)) $(call q,$(PY)) scripts/exec_with_args.py $(call q,$(PY)) -m reproduce.$* $(ITEM_ARGS) -- $(call q,$(ARGS))
	$(call q,$(PY)) -m results $(call q,$(OUT))

reproduce-all: $(addprefix reproduce-,$(ITEMS))

tables: install
	$(call q,$(PY)) -m results $(call q,$(OUT))

k8s: install
	$(call q,$(PY)) -m k8s.generate

image: install
	$(if $(IMAGE),,$(error no valid image in $(K8S_SETTINGS): see $(PY) -m k8s.generate --image --settings $(K8S_SETTINGS)))
	docker build -f k8s/Dockerfile --build-arg GIT_COMMIT="$$(git rev-parse HEAD)" -t $(call q,$(IMAGE)) .

test: install
	$(call q,$(PY)) scripts/exec_with_args.py $(call q,$(PY)) -m pytest -q -n auto --dist worksteal --durations=30 -- $(call q,$(PYTEST_ARGS))

docs: install
	$(call q,$(PY)) -m mkdocs build --strict

BENCH_ARGS ?=
bench: install
	$(call q,$(PY)) scripts/exec_with_args.py $(call q,$(PY)) -m bench --out docs -- $(call q,$(BENCH_ARGS))

clean:
	rm -rf $(call q,$(VENV)) runs site .pytest_cache
