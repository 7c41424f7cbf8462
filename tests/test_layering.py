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
