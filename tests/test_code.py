"""How the code is put together: modules meet through public names, and the project explains its
method in its own docs."""

import ast

from conftest import ROOT

PACKAGES = ("extrap", "data", "models", "reproduce", "results", "k8s", "bench")


def project_files(suffixes=(".py",)):
    for package in PACKAGES:
        yield from (p for p in (ROOT / package).rglob("*") if p.suffix in suffixes)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in project_files():
        for node in ast.walk(ast.parse(path.read_text())):
            ours = isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").split(".")[0] in PACKAGES)
            if ours:
                offenders += [f"{path.relative_to(ROOT)}: {alias.name}" for alias in node.names
                              if alias.name.startswith("_")]
    assert not offenders


def test_the_method_is_cited_from_the_projects_own_docs():
    assert (ROOT / "docs" / "method.md").is_file()
    assert "docs/method.md" in (ROOT / "README.md").read_text()
    outside = "SPEC" + " §"  # a working page beside the project, not part of it
    cited = [str(p.relative_to(ROOT)) for p in project_files((".py", ".yaml", ".md"))
             if outside in p.read_text()]
    assert not cited
