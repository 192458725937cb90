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


def _imports(path, module: str, modules: set) -> set:
    """The project modules ``module`` (at ``path``) imports, lazily or not."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            names = subs if len(subs) == len(node.names) else [*subs, base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set]:
    files = {}
    for path in project_files():
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {m: _imports(p, m, set(files)) for m, p in files.items()}


def test_no_module_imports_a_module_that_imports_it_back():
    graph = import_graph()

    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    circles = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not circles


def test_the_collator_imports_nothing_from_the_runner():
    graph = import_graph()
    assert not sorted(f"{a} -> {b}" for a in graph for b in graph[a]
                      if a.split(".")[0] == "results" and b.split(".")[0] == "reproduce")


def test_the_optimizer_probes_no_optional_member_of_its_communicator():
    probing = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "extrap").rglob("*.py")
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if ("getattr(" in line or "hasattr(" in line) and "comm" in line.split("(", 1)[1]]
    assert not probing
