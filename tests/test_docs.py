"""The documentation builds as a site in MkDocs' strict mode: every page in the nav, no dead link
between pages, no link to a missing file or heading (``make docs``)."""

import subprocess
import sys

import pytest

from conftest import ROOT


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="MkDocs is installed by `make install` (the dev extra)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    for page in ("index.html", "using/index.html", "method/index.html", "laptop/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


def test_a_dead_link_fails_the_build(tmp_path):
    """The check bites: a copy of the docs with one link to a page that does not exist."""
    pytest.importorskip("mkdocs", reason="MkDocs is installed by `make install` (the dev extra)")
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "using.md").write_text((docs / "using.md").read_text() + "\nSee [nowhere](no-such-page.md).\n")
    config = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    (tmp_path / "mkdocs.yml").write_text(config)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no-such-page.md" in proc.stdout + proc.stderr
