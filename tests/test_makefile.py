"""The Makefile passes what it is given — Make variables on the command line, k8s/settings.yaml's
image — to its commands as literal arguments: a `;`, a `$(...)` or a quote in a value is never run
by the shell, and a failing command fails make."""

import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT

TOUCH = "touch {file}"


def make(*args, env=None, timeout=120):
    """make in the checkout, the installed .venv taken as it is (no install step)."""
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-o", "install", "-o", ".venv/.installed",
                           f"PY={sys.executable}", *args], cwd=ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("target, variable", [
    ("tables", "OUT"),
    ("reproduce-table1", "OUT"),
    ("reproduce-table1", "DATA_DIR"),
    ("reproduce-table1", "LAUNCH"),
    ("reproduce-table1", "ARGS"),
    ("test", "PYTEST_ARGS"),
])
@pytest.mark.parametrize("inject", ["x; {touch}", "x && {touch}", "$$({touch})", "`{touch}`", "x' ; {touch} ; '"])
def test_a_make_variable_is_never_run_as_shell_code(tmp_path, target, variable, inject):
    marker = tmp_path / "FILE"
    value = inject.format(touch=TOUCH.format(file=marker))
    extra = {"reproduce-table1": ["SCALE=smoke", f"DATA_DIR={tmp_path / 'no-data'}"],
             "test": []}.get(target, [])
    if variable == "PYTEST_ARGS":
        value = f"--collect-only -q {tmp_path / 'none'} {value}"
    proc = make(target, *extra, f"OUT={tmp_path / 'out'}", f"{variable}={value}")
    assert not marker.exists(), (proc.stdout[-1000:], proc.stderr[-1000:])
    assert proc.returncode != 0  # the command failed on the odd value, and make says so


def _fake_docker(tmp_path):
    """A ``docker`` on PATH that writes its arguments, one per line, to ``tmp_path/argv``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {tmp_path / 'argv'}\n")
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_the_settings_image_reaches_docker_as_one_literal_argument(tmp_path):
    settings = tmp_path / "settings.yaml"
    text = (ROOT / "k8s" / "settings.yaml").read_text()
    settings.write_text(text.replace("image: extrap:0.1.0", 'image: "registry.example.com/you/extrap:0.2.0"  # quoted'))
    proc = make("image", f"K8S_SETTINGS={settings}", env=_fake_docker(tmp_path))
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[argv.index("-t") + 1] == "registry.example.com/you/extrap:0.2.0"


def test_an_image_that_is_shell_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "FILE"
    settings = tmp_path / "settings.yaml"
    text = (ROOT / "k8s" / "settings.yaml").read_text()
    settings.write_text(text.replace("image: extrap:0.1.0", f"image: $(touch {marker})`touch {marker}`;x"))
    proc = make("image", f"K8S_SETTINGS={settings}", env=_fake_docker(tmp_path))
    assert proc.returncode != 0 and "no valid image" in proc.stderr
    assert not marker.exists() and not (tmp_path / "argv").exists()


def test_exec_with_args_splits_like_a_shell_and_runs_nothing(tmp_path):
    marker = tmp_path / "FILE"
    script = ROOT / "scripts" / "exec_with_args.py"
    out = subprocess.run([sys.executable, str(script), sys.executable, "-c", "import sys; print(sys.argv[1:])", "--",
                          f"-m \"not slow\" -k 'a b' ; touch {marker} $(touch {marker})"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(["-m", "not slow", "-k", "a b", ";", "touch", str(marker), "$(touch", f"{marker})"])
    assert not marker.exists()
    bad = subprocess.run([sys.executable, str(script), "true", "--", "'unclosed"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_make_help_works_before_install(tmp_path):
    """A fresh clone's first `make help`: no .venv yet, so nothing to run a Python with."""
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "--no-print-directory", "help", f"VENV={tmp_path / 'no-venv'}"], cwd=ROOT,
                          env=base, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "make demo" in proc.stdout and "make docs" in proc.stdout
    assert "<the image in k8s/settings.yaml>" in proc.stdout
