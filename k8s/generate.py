"""``make k8s``: the Kubernetes manifests in ``k8s/``, generated from the experiments' configs
(``reproduce/configs/*.yaml``) and ``k8s/settings.yaml``, so the jobs cannot drift from the
experiments::

    python -m k8s.generate            # (re)write the manifests, remove stale ones
    python -m k8s.generate --check    # exit 1, naming the files, if any differs
    python -m k8s.generate --settings mine.yaml --out my-k8s [--per-cell]   # yours, elsewhere

What it writes:

- ``mpijobs/<job>.yaml``: a Kubeflow MPIJob (``kubeflow.org/v2beta1``) per paper item; an item
  whose runs need different worker counts (Table 3's variants) gets one job per K, and each job's
  ranks run that K's runs (the runner skips the others under a launcher). With ``--per-cell``,
  one job per (item, variant, cell), each writing its own folder, so a cluster runs a table's
  cells side by side; ``python -m results`` merges the folders.
  The launcher runs ``mpirun`` over the worker pods' sshd; every rank runs the item's reproduce
  script with the processes engine (torch.distributed, NCCL on GPU).
- ``pytorchjobs/<job>.yaml``: the same runs as Kubeflow training-operator PyTorchJobs
  (``kubeflow.org/v1``), started by ``torchrun`` in every pod, for clusters without the MPI
  operator.
- ``pvc.yaml``: the shared volume; ``data-pod.yaml``: a pod to copy datasets in and results out;
  ``collate.yaml``: a Job running ``python -m results`` over every job's records.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from fractions import Fraction
from pathlib import Path

import yaml

from reproduce import ITEMS  # a config per item

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SETTINGS = HERE / "settings.yaml"
GENERATED_DIRS = ("mpijobs", "pytorchjobs")
DATA = "/data"  # where the volume is mounted in every pod

__all__ = ["load_settings", "validate_settings", "quantity", "times", "jobs", "manifests", "write", "main", "ITEMS"]


_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a Kubernetes (DNS-1123) label name
_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # Secret, PriorityClass
_IMAGE = re.compile(r"([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
                    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?")
_QUANTITY = re.compile(r"(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][-+]?[0-9]+|m|k|M|G|T|P|E)?")  # Kubernetes' grammar
_KEYS = {"image", "scale", "volume", "gpus_per_worker", "per_gpu", "shm", "uid", "user", "ssh_port", "run_policy"}
# where the pods may run, from whom they pull, how they rank: optional, absent from the defaults
_OPTIONAL = {"node_selector", "tolerations", "image_pull_secrets", "priority_class"}
_CLEAN_POD_POLICIES = ("Running", "All", "None")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")  # a label key, prefix optional
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def quantity(value, key: str) -> tuple[Fraction, str]:
    """A Kubernetes quantity (``6``, ``1.5``, ``500m``, ``24Gi``) as (exact number, suffix)."""
    text = str(value) if _integer(value) or isinstance(value, float) and math.isfinite(value) else value
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{key}: expected a Kubernetes quantity such as 6, 1.5, 500m or 24Gi, got {value!r}")
    return Fraction(match["number"]), match["suffix"] or ""


def times(value, n: int, key: str) -> str:
    """``quantity × n`` in the same unit, exactly: ``24Gi × 2 = 48Gi``, ``1.5 × 2 = 3``, ``1.5 × 3 = 4.5``."""
    number, suffix = quantity(value, key)
    if suffix[:1] in ("e", "E") and len(suffix) > 1:  # a decimal exponent (1e3): the number it stands for
        number, suffix = number * Fraction(10) ** int(suffix[1:]), ""
    product = number * n
    if product.denominator == 1:
        return f"{product.numerator}{suffix}"
    digits = 0
    while (product * 10 ** digits).denominator != 1:  # a finite decimal: the inputs are decimals
        digits += 1
    scaled = product.numerator * 10 ** digits // product.denominator
    whole, frac = divmod(scaled, 10 ** digits)
    return f"{whole}.{frac:0{digits}d}{suffix}"


def _require(condition: bool, key: str, expected: str, value) -> None:
    if not condition:
        raise ValueError(f"{key}: expected {expected}, got {value!r}")


def validate_settings(settings, where: str) -> dict:
    """Every key of k8s/settings.yaml, its type and range, checked before anything is written;
    a ValueError names the first bad one."""
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(settings).__name__}")
    unknown = sorted(set(settings) - _KEYS - _OPTIONAL, key=str)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key in {where} (known: {', '.join(sorted(_KEYS | _OPTIONAL))})")
    missing = [key for key in sorted(_KEYS) if key not in settings]
    if missing:
        raise ValueError(f"{missing[0]}: missing from {where}")
    s = settings
    _require(isinstance(s["image"], str) and _IMAGE.fullmatch(s["image"]) is not None, "image",
             "an image reference such as registry.example.com/you/extrap:0.1.0", s["image"])
    scales = _common_scales()
    _require(s["scale"] in scales, "scale", f"one of {', '.join(scales)} (the scales every item has)", s["scale"])
    volume = s["volume"]
    _require(isinstance(volume, dict), "volume", "a mapping with claim, size and storage_class", volume)
    for key in volume:
        _require(key in ("claim", "size", "storage_class"), f"volume.{key}", "no such key (claim, size, storage_class)", key)
    _require(isinstance(volume.get("claim"), str) and _NAME.fullmatch(volume["claim"]) is not None, "volume.claim",
             "a Kubernetes name (lower-case letters, digits, '-')", volume.get("claim"))
    quantity(volume.get("size"), "volume.size")
    cls = volume.get("storage_class")
    _require(cls is None or isinstance(cls, str) and _NAME.fullmatch(cls) is not None, "volume.storage_class",
             "null or a storage class name", cls)
    _require(_integer(s["gpus_per_worker"]) and s["gpus_per_worker"] >= 1, "gpus_per_worker", "an integer >= 1",
             s["gpus_per_worker"])
    per = s["per_gpu"]
    _require(isinstance(per, dict) and set(per) == {"cpu", "memory"}, "per_gpu", "a mapping of cpu and memory", per)
    quantity(per["cpu"], "per_gpu.cpu")
    quantity(per["memory"], "per_gpu.memory")
    quantity(s["shm"], "shm")
    _require(_integer(s["uid"]) and 1 <= s["uid"] <= 2**31 - 1, "uid",
             "an integer user id from 1 to 2147483647 (the pods run as a non-root user)", s["uid"])
    _require(isinstance(s["user"], str) and re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", s["user"]) is not None
             and s["user"] != "root", "user", "a non-root user name", s["user"])
    _require(_integer(s["ssh_port"]) and 1 <= s["ssh_port"] <= 65535, "ssh_port", "a port from 1 to 65535", s["ssh_port"])
    policy = s["run_policy"]
    _require(isinstance(policy, dict) and set(policy) == {"backoffLimit", "cleanPodPolicy", "ttlSecondsAfterFinished"},
             "run_policy", "a mapping of backoffLimit, cleanPodPolicy and ttlSecondsAfterFinished", policy)
    for key in ("backoffLimit", "ttlSecondsAfterFinished"):
        _require(_integer(policy[key]) and policy[key] >= 0, f"run_policy.{key}", "an integer >= 0", policy[key])
    _require(policy["cleanPodPolicy"] in _CLEAN_POD_POLICIES, "run_policy.cleanPodPolicy",
             f"one of {', '.join(_CLEAN_POD_POLICIES)}", policy["cleanPodPolicy"])
    _validate_placement(s)
    return settings


def _validate_placement(s: dict) -> None:
    """The optional keys: ``node_selector`` {label key: value}, ``tolerations`` (Kubernetes'
    fields, snake case nowhere: key, operator, value, effect, tolerationSeconds),
    ``image_pull_secrets`` [secret names], ``priority_class`` (a PriorityClass name)."""
    selector = s.get("node_selector", {})
    _require(isinstance(selector, dict), "node_selector", "a mapping of node label keys to values", selector)
    for key, value in selector.items():
        _require(isinstance(key, str) and _LABEL_KEY.fullmatch(key) is not None and len(key) <= 316,
                 "node_selector", "label keys such as nvidia.com/gpu.product", key)
        _require(isinstance(value, str) and _LABEL_VALUE.fullmatch(value) is not None and len(value) <= 63,
                 f"node_selector.{key}", "a label value (a string of letters, digits, '-', '_', '.')", value)
    tolerations = s.get("tolerations", [])
    _require(isinstance(tolerations, list), "tolerations", "a list of tolerations", tolerations)
    for i, t in enumerate(tolerations):
        where = f"tolerations[{i}]"
        _require(isinstance(t, dict) and t and set(t) <= _TOLERATION_KEYS, where,
                 f"a mapping of {', '.join(sorted(_TOLERATION_KEYS))}", t)
        operator = t.get("operator", "Equal")
        _require(operator in ("Equal", "Exists"), f"{where}.operator", "Equal or Exists", operator)
        _require("key" not in t or isinstance(t["key"], str) and _LABEL_KEY.fullmatch(t["key"]) is not None,
                 f"{where}.key", "a taint key", t.get("key"))
        _require("key" in t or operator == "Exists", f"{where}.key", "a key (only operator Exists matches every key)", None)
        _require("value" not in t or operator == "Equal" and isinstance(t["value"], str), f"{where}.value",
                 "a string, with operator Equal (Exists takes none)", t.get("value"))
        _require("effect" not in t or t["effect"] in _EFFECTS, f"{where}.effect", f"one of {', '.join(_EFFECTS)}",
                 t.get("effect"))
        _require("tolerationSeconds" not in t or _integer(t["tolerationSeconds"]) and t.get("effect") == "NoExecute",
                 f"{where}.tolerationSeconds", "an integer, with effect NoExecute", t.get("tolerationSeconds"))
    secrets = s.get("image_pull_secrets", [])
    _require(isinstance(secrets, list) and all(isinstance(n, str) and _SUBDOMAIN.fullmatch(n) for n in secrets),
             "image_pull_secrets", "a list of Secret names", secrets)
    priority = s.get("priority_class")
    _require(priority is None or isinstance(priority, str) and _SUBDOMAIN.fullmatch(priority) is not None,
             "priority_class", "null or a PriorityClass name", priority)


def _common_scales() -> list[str]:
    """The scales every item's config has (a job per item is generated at the chosen one)."""
    from reproduce.config import SCALES, load_config

    return [scale for scale in SCALES if all(scale in (load_config(item).get("scales") or {}) for item in ITEMS)]


def load_settings(path: Path = SETTINGS) -> dict:
    """k8s/settings.yaml, read and validated (``validate_settings``); a ValueError names the
    file and what is wrong, in one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        settings = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or type(e).__name__})") from None
    if settings is None:
        raise ValueError(f"{path}: empty; expected the settings (see k8s/settings.yaml in the checkout)")
    return validate_settings(settings, str(path))


# -- the jobs: one per (item, worker count) -----------------------------------------------------------

def _dns(text: str) -> str:
    """A variant's or cell's name as part of a Kubernetes name: ``B=1024`` → ``b-1024``,
    ``extrap-sgd+post-local`` → ``extrap-sgd-post-local``."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def jobs(scale: str, per_cell: bool = False) -> list[dict]:
    """``{"name", "item", "workers", "variants", "cells"}`` per job, from the item's resolved runs
    at ``scale`` (the runner's own ``plan``, so every setting is checked as a run would check it):
    one job per (item, worker count), or with ``per_cell`` one per (item, variant, cell), so that
    a cluster runs an item's cells side by side (``cells`` None: all of them)."""
    from reproduce.config import parse_args, plan

    out = []
    for item in ITEMS:
        runs = plan(item, parse_args(item, ["--scale", scale]))
        if per_cell:
            for variant, cell in dict.fromkeys((r.variant, r.cell) for r in runs):
                k = next(r.settings["workers"] for r in runs if (r.variant, r.cell) == (variant, cell))
                parts = [item] + ([_dns(variant)] if variant != "default" else []) + [_dns(cell)]
                out.append({"name": _fit("-".join(parts), k), "item": item, "workers": k, "variants": [variant],
                            "cells": [cell]})
            continue
        by_k: dict[int, list[str]] = {}
        for run in runs:
            variants = by_k.setdefault(run.settings["workers"], [])
            if run.variant not in variants:
                variants.append(run.variant)
        for k, variants in sorted(by_k.items()):
            out.append({"name": f"{item}-k{k}" if len(by_k) > 1 else item, "item": item, "workers": k,
                        "variants": variants, "cells": None})
    names = [j["name"] for j in out]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise ValueError(f"two jobs would both be named {clash!r}: rename a variant or cell")
    too_long = next((j["name"] for j in out if len(_longest_child(j["name"], j["workers"])) > 63), None)
    if too_long is not None:
        raise ValueError(f"job {too_long!r}: the names of its pods would pass Kubernetes' 63 characters; "
                         "shorten the item, variant or cell name")
    return out


def _longest_child(name: str, workers: int) -> str:
    """The longest name the operators derive from a job's (its last worker pod and Service)."""
    return f"extrap-{name}-torchrun-worker-{max(workers - 1, 0)}"


def _fit(name: str, workers: int) -> str:
    """A per-cell job's name, cut where its pods' names would pass 63 characters and told apart
    from the other cut names by a short hash of the whole."""
    if len(_longest_child(name, workers)) <= 63:
        return name
    import hashlib

    room = 63 - len(_longest_child("", workers)) - 7  # "-" and six hex digits
    return f"{name[:room].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def reproduce_args(job: dict, scale: str) -> list[str]:
    """The reproduce script's command line, as every rank runs it. No ``--workers``: K comes from
    the config (it would override every variant's), and the runner checks it against the ranks.
    A per-cell job selects its variant and cell, and writes its own folder."""
    only = [] if not job.get("cells") else ["--variants", ",".join(job["variants"]), "--only", ",".join(job["cells"])]
    return ["python", "-m", f"reproduce.{job['item']}", "--scale", scale, "--engine", "processes",
            "--data-dir", f"{DATA}/datasets", *only,
            "--out", f"{DATA}/runs/{scale}/{job['name']}", "--no-progress"]


# -- pods ---------------------------------------------------------------------------------------------

def _labels(job: dict | None, component: str) -> dict:
    labels = {"app.kubernetes.io/name": "extrap", "app.kubernetes.io/component": component}
    if job is not None:
        labels["extrap/item"] = job["item"]
        labels["extrap/job"] = job["name"]
    return labels


def _pod_security(s: dict) -> dict:
    return {"runAsNonRoot": True, "runAsUser": s["uid"], "runAsGroup": s["uid"], "fsGroup": s["uid"],
            "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _container(s: dict, name: str, command: list[str], resources: dict, data: bool, shm: bool) -> dict:
    c = {"name": name, "image": s["image"], "imagePullPolicy": "IfNotPresent", "command": command,
         "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "NCCL_DEBUG", "value": "WARN"}],
         "resources": resources, "securityContext": _container_security()}
    mounts = ([{"name": "data", "mountPath": DATA}] if data else []) + \
             ([{"name": "dshm", "mountPath": "/dev/shm"}] if shm else [])
    if mounts:
        c["volumeMounts"] = mounts
    return c


def _volumes(s: dict, shm: bool) -> list[dict]:
    vols = [{"name": "data", "persistentVolumeClaim": {"claimName": s["volume"]["claim"]}}]
    if shm:
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s["shm"]}})
    return vols


def _pod(s: dict, labels: dict, containers: list[dict], volumes: list[dict] | None,
         restart: str | None = None) -> dict:
    spec = {"securityContext": _pod_security(s), "containers": containers}
    if restart:
        spec["restartPolicy"] = restart
    if volumes:
        spec["volumes"] = volumes
    if s.get("node_selector"):
        spec["nodeSelector"] = dict(s["node_selector"])
    if s.get("tolerations"):
        spec["tolerations"] = [dict(t) for t in s["tolerations"]]
    if s.get("image_pull_secrets"):
        spec["imagePullSecrets"] = [{"name": n} for n in s["image_pull_secrets"]]
    if s.get("priority_class"):
        spec["priorityClassName"] = s["priority_class"]
    return {"metadata": {"labels": labels}, "spec": spec}


def _gpu_resources(s: dict, gpus: int) -> dict:
    per = s["per_gpu"]
    cpu = times(per["cpu"], gpus, "per_gpu.cpu")
    memory = times(per["memory"], gpus, "per_gpu.memory")
    return {"requests": {"cpu": cpu, "memory": memory},
            "limits": {"memory": memory, "nvidia.com/gpu": gpus}}


def _slots(s: dict, job: dict) -> tuple[int, int]:
    """(GPUs = ranks per worker pod, worker pods) for a job of K ranks."""
    slots = min(s["gpus_per_worker"], job["workers"])
    if job["workers"] % slots:
        raise ValueError(f"gpus_per_worker: {s['gpus_per_worker']} does not divide {job['name']}'s "
                         f"{job['workers']} workers")
    return slots, job["workers"] // slots


# -- the manifests ------------------------------------------------------------------------------------

def mpijob(s: dict, job: dict) -> dict:
    slots, replicas = _slots(s, job)
    home = f"/home/{s['user']}"
    mpirun = ["mpirun", "--hostfile", "/etc/mpi/hostfile", "-np", str(job["workers"]),
              "--bind-to", "none", "--map-by", "slot", "--mca", "pml", "ob1", "--mca", "btl", "self,tcp",
              "-x", "PATH", "-x", "LD_LIBRARY_PATH", "-x", "PYTHONUNBUFFERED", "-x", "NCCL_DEBUG"]
    launcher = _container(s, "launcher", mpirun + reproduce_args(job, s["scale"]),
                          {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
                          data=False, shm=False)
    worker = _container(s, "worker", ["/usr/sbin/sshd", "-De", "-f", f"{home}/.sshd_config"],
                        _gpu_resources(s, slots), data=True, shm=True)
    return {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": {"name": f"extrap-{job['name']}", "labels": _labels(job, "mpijob")},
        "spec": {
            "slotsPerWorker": slots,
            "runPolicy": dict(s["run_policy"]),
            "launcherCreationPolicy": "WaitForWorkersReady",
            "mpiImplementation": "OpenMPI",
            "sshAuthMountPath": f"{home}/.ssh",
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "OnFailure",
                             "template": _pod(s, _labels(job, "launcher"), [launcher], None)},
                "Worker": {"replicas": replicas, "restartPolicy": "OnFailure",
                           "template": _pod(s, _labels(job, "worker"), [worker], _volumes(s, True))},
            },
        },
    }


def pytorchjob(s: dict, job: dict) -> dict:
    slots, pods = _slots(s, job)
    # the training operator sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
    # PET_MASTER_PORT, which torchrun reads as its defaults; it starts `slots` ranks per pod
    command = ["torchrun", "-m"] + reproduce_args(job, s["scale"])[2:]
    pod = _pod(s, _labels(job, "torchrun"),
               [_container(s, "pytorch", command, _gpu_resources(s, slots), data=True, shm=True)],
               _volumes(s, True))
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if pods > 1:
        replicas["Worker"] = {"replicas": pods - 1, "restartPolicy": "OnFailure", "template": pod}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": f"extrap-{job['name']}-torchrun", "labels": _labels(job, "pytorchjob")},
        "spec": {"nprocPerNode": str(slots), "runPolicy": dict(s["run_policy"]),
                 "pytorchReplicaSpecs": replicas},
    }


def pvc(s: dict) -> dict:
    spec = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": s["volume"]["size"]}}}
    if s["volume"].get("storage_class"):
        spec["storageClassName"] = s["volume"]["storage_class"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": s["volume"]["claim"], "labels": _labels(None, "data")}, "spec": spec}


def data_pod(s: dict) -> dict:
    small = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    pod = _pod(s, _labels(None, "data"),
               [_container(s, "data", ["sleep", "infinity"], small, data=True, shm=False)],
               _volumes(s, False), restart="Never")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "extrap-data", **pod["metadata"]},
            "spec": pod["spec"]}


def collate_job(s: dict) -> dict:
    small = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    command = ["python", "-m", "results", f"{DATA}/runs/{s['scale']}"]
    pod = _pod(s, _labels(None, "collate"),
               [_container(s, "collate", command, small, data=True, shm=False)],
               _volumes(s, False), restart="Never")
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "extrap-collate", "labels": _labels(None, "collate")},
            "spec": {"backoffLimit": 1, "ttlSecondsAfterFinished": s["run_policy"]["ttlSecondsAfterFinished"],
                     "template": pod}}


class _NoAliases(yaml.SafeDumper):
    """A dumper that writes a repeated object out in full: no ``&id001`` anchors, which some
    tools (and readers) do not follow."""

    def ignore_aliases(self, data) -> bool:
        return True


def _render(obj: dict, about: str) -> str:
    header = (f"# Generated by `make k8s` (k8s/generate.py) from {about} and k8s/settings.yaml.\n"
              "# Do not edit: change those and run `make k8s`.\n")
    return header + yaml.dump(obj, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=100)


def manifests(settings: dict | None = None, per_cell: bool = False) -> dict[str, str]:
    """``{path relative to k8s/: text}`` of every generated manifest (``per_cell``: a job per
    item, variant and cell)."""
    s = settings or load_settings()
    out = {"pvc.yaml": _render(pvc(s), "the volume settings"),
           "data-pod.yaml": _render(data_pod(s), "the volume settings"),
           "collate.yaml": _render(collate_job(s), "the results layout")}
    for job in jobs(s["scale"], per_cell):
        about = f"reproduce/configs/{job['item']}.yaml"
        out[f"mpijobs/{job['name']}.yaml"] = _render(mpijob(s, job), about)
        out[f"pytorchjobs/{job['name']}.yaml"] = _render(pytorchjob(s, job), about)
    return out


def write(directory: Path = HERE, settings: dict | None = None, check: bool = False, per_cell: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) the manifests into ``directory``; returns the paths
    that differed, including stale files in the generated folders (removed when writing)."""
    wanted = manifests(settings, per_cell)
    changed = []
    for rel, text in wanted.items():
        path = directory / rel
        if not path.is_file() or path.read_text() != text:
            changed.append(rel)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for sub in GENERATED_DIRS:
        for path in sorted((directory / sub).glob("*.yaml")):
            rel = f"{sub}/{path.name}"
            if rel not in wanted:
                changed.append(rel)
                if not check:
                    path.unlink()
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m k8s.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 if a file differs")
    ap.add_argument("--settings", type=Path, default=SETTINGS, help="the settings file (default: k8s/settings.yaml)")
    ap.add_argument("--image", action="store_true", help="print the settings' image and exit (make image)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the manifests into this folder instead of k8s/ (needed with your own --settings)")
    ap.add_argument("--per-cell", action="store_true",
                    help="one job per item, variant and cell (a table's cells run side by side)")
    args = ap.parse_args(argv)
    if args.image:
        try:
            print(load_settings(args.settings)["image"])
        except ValueError as e:
            print(f"k8s.generate: {e}", file=sys.stderr)
            return 2
        return 0
    committed = args.out is None or args.out.resolve() == HERE
    directory = HERE if committed else args.out
    shown = "k8s" if committed else str(args.out)
    try:
        settings = load_settings(args.settings)
        if committed and (args.per_cell or args.settings.resolve() != SETTINGS):
            raise ValueError("k8s/ holds the manifests of k8s/settings.yaml, one job per item; give --out DIR "
                             "for your own settings or --per-cell")
        changed = write(directory, settings=settings, check=args.check, per_cell=args.per_cell)
    except (ValueError, OSError) as e:
        print(f"k8s.generate: {e}", file=sys.stderr)
        return 2
    for rel in changed:
        print(f"{'differs' if args.check else 'wrote'} {shown}/{rel}")
    if args.check and changed:
        print(f"{shown}/ is out of date: run `make k8s`" if committed else f"{shown}/ is out of date", file=sys.stderr)
        return 1
    if not changed:
        print(f"{shown}/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
