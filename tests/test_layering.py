"""The library does not depend on its plug-ins: data flows branchynet -> networks -> experiments."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_modules(path):
    """Top-level names of every module ``path`` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_in_the_library_imports_networks_or_experiments():
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & {"networks", "experiments"})
                 for p in (ROOT / "branchynet").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_a_lazy_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from networks import get_network\n    return get_network\n")
    assert "networks" in imported_modules(module)


def test_import_branchynet_loads_neither_plug_ins_nor_the_runner():
    code = ("import sys, branchynet, branchynet.net, branchynet.sweep, branchynet.selection; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('networks', 'experiments', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def project_imports(path, package_root):
    """Modules of the project (dotted names under ``package_root``) that ``path`` imports,
    at any depth of the file, relative imports resolved."""
    module = ".".join(path.relative_to(package_root).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module[:-len(".__init__")]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_cycles(package_root, packages):
    """Every set of modules of ``packages`` that import each other in a circle (strongly
    connected components of the import graph with more than one module, or a module
    importing itself), sorted."""
    files = {}
    for package in packages:
        for path in (package_root / package).rglob("*.py"):
            name = ".".join(path.relative_to(package_root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    graph = {name: sorted(project_imports(path, package_root) & files.keys() - {name})
             for name, path in files.items()}
    index, low, stack, cycles = {}, {}, [], []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_the_library_and_the_runner_import_in_no_circle():
    """A circle (experiment <-> guarantee once, over SettingsError) makes the import order
    matter and hides which module owns what; networks/ is left out: its registry's
    ``__init__`` imports the network modules, which register themselves with it."""
    assert import_cycles(ROOT, ["branchynet", "experiments", "benchmarks"]) == []


def test_the_circle_check_finds_a_circle_through_a_lazy_relative_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import f\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from .c import g\n")
    (tmp_path / "pkg" / "c.py").write_text("from . import a\n")
    (tmp_path / "pkg" / "d.py").write_text("import pkg.a\n")
    assert import_cycles(tmp_path, ["pkg"]) == [["pkg.a", "pkg.b", "pkg.c"]]
