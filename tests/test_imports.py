"""The project's modules import each other one way: no circle, and no module is imported
through importlib to get around one (README: "Imports flow one way")."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_imports():
    """{module: the project modules it imports, at any depth of its code}."""
    modules = {p.stem for p in ROOT.glob("*.py")}
    graph = {}
    for name in modules:
        tree = ast.parse((ROOT / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value)
        graph[name] = found & modules - {name}
    return graph


def test_no_module_imports_one_that_imports_it():
    graph = project_imports()

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in graph[start])

    circles = sorted(name for name in graph if reaches(name, name))
    assert circles == [], f"modules in an import circle: {circles}"
    assert "sweep" not in graph["sweep_backends"] and "sweep_task" in graph["sweep_backends"]
