"""``make k8s``: the Kubernetes manifests in ``k8s/``, generated from the experiments' configs
(``reproduce/configs/*.yaml``) and ``k8s/settings.yaml``, so the jobs cannot drift from the
experiments::

    python -m k8s.generate            # (re)write the manifests, remove stale ones
    python -m k8s.generate --check    # exit 1, naming the files, if any differs

What it writes:

- ``mpijobs/<job>.yaml``: a Kubeflow MPIJob (``kubeflow.org/v2beta1``) per paper item; an item
  whose runs need different worker counts (Table 3's variants) gets one job per K, and each job's
  ranks run that K's runs (the runner skips the others under a launcher).
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
import sys
from pathlib import Path

import yaml

from reproduce import ITEMS  # a config per item

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SETTINGS = HERE / "settings.yaml"
GENERATED_DIRS = ("mpijobs", "pytorchjobs")
DATA = "/data"  # where the volume is mounted in every pod

__all__ = ["load_settings", "jobs", "manifests", "write", "main", "ITEMS"]


def load_settings(path: Path = SETTINGS) -> dict:
    with open(path) as f:
        settings = yaml.safe_load(f)
    for key in ("image", "scale", "volume", "gpus_per_worker", "per_gpu", "shm", "uid", "user",
                "ssh_port", "run_policy"):
        if key not in settings:
            raise ValueError(f"{key}: missing from {path}")
    if not (isinstance(settings["gpus_per_worker"], int) and settings["gpus_per_worker"] >= 1):
        raise ValueError(f"gpus_per_worker: expected an integer >= 1 in {path}")
    if settings["uid"] == 0 or settings["user"] == "root":
        raise ValueError(f"uid/user: the pods run as a non-root user ({path})")
    return settings


# -- the jobs: one per (item, worker count) -----------------------------------------------------------

def jobs(scale: str) -> list[dict]:
    """``{"name", "item", "workers", "variants"}`` per job, from the item's resolved runs at
    ``scale`` (the runner's own ``plan``, so every setting is checked as a run would check it)."""
    from reproduce.runner import parse_args, plan

    out = []
    for item in ITEMS:
        by_k: dict[int, list[str]] = {}
        for run in plan(item, parse_args(item, ["--scale", scale])):
            variants = by_k.setdefault(run.settings["workers"], [])
            if run.variant not in variants:
                variants.append(run.variant)
        for k, variants in sorted(by_k.items()):
            out.append({"name": f"{item}-k{k}" if len(by_k) > 1 else item, "item": item, "workers": k,
                        "variants": variants})
    return out


def reproduce_args(job: dict, scale: str) -> list[str]:
    """The reproduce script's command line, as every rank runs it. No ``--workers``: K comes from
    the config (it would override every variant's), and the runner checks it against the ranks."""
    return ["python", "-m", f"reproduce.{job['item']}", "--scale", scale, "--engine", "processes",
            "--data-dir", f"{DATA}/datasets",
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
    return {"metadata": {"labels": labels}, "spec": spec}


def _gpu_resources(s: dict, gpus: int) -> dict:
    per = s["per_gpu"]
    cpu = _times(per["cpu"], gpus)
    memory = _times(per["memory"], gpus)
    return {"requests": {"cpu": cpu, "memory": memory},
            "limits": {"memory": memory, "nvidia.com/gpu": gpus}}


def _times(quantity: str, n: int) -> str:
    """``"24Gi" × 2 = "48Gi"``, ``"6" × 2 = "12"`` (integer quantities with an optional suffix)."""
    text = str(quantity)
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits == 0:
        raise ValueError(f"per_gpu: {quantity!r} is not an integer quantity (e.g. 6, 24Gi)")
    return f"{int(text[:digits]) * n}{text[digits:]}"


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


def _render(obj: dict, about: str) -> str:
    header = (f"# Generated by `make k8s` (k8s/generate.py) from {about} and k8s/settings.yaml.\n"
              "# Do not edit: change those and run `make k8s`.\n")
    return header + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100)


def manifests(settings: dict | None = None) -> dict[str, str]:
    """``{path relative to k8s/: text}`` of every generated manifest."""
    s = settings or load_settings()
    out = {"pvc.yaml": _render(pvc(s), "the volume settings"),
           "data-pod.yaml": _render(data_pod(s), "the volume settings"),
           "collate.yaml": _render(collate_job(s), "the results layout")}
    for job in jobs(s["scale"]):
        about = f"reproduce/configs/{job['item']}.yaml"
        out[f"mpijobs/{job['name']}.yaml"] = _render(mpijob(s, job), about)
        out[f"pytorchjobs/{job['name']}.yaml"] = _render(pytorchjob(s, job), about)
    return out


def write(directory: Path = HERE, settings: dict | None = None, check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) the manifests; returns the paths that differed,
    including stale files in the generated folders."""
    wanted = manifests(settings)
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
    args = ap.parse_args(argv)
    try:
        changed = write(check=args.check)
    except (ValueError, OSError) as e:
        print(f"k8s.generate: {e}", file=sys.stderr)
        return 2
    for rel in changed:
        print(f"{'differs' if args.check else 'wrote'} k8s/{rel}")
    if args.check and changed:
        print("k8s/ is out of date: run `make k8s`", file=sys.stderr)
        return 1
    if not changed:
        print("k8s/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
