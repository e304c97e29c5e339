"""The package's imports run downhill: no module imports one on a higher floor, and no two
modules import each other, directly or in a loop. Every import counts, also one inside a
function (a lazy import is still a dependency)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "detrdistill"
# Floors from the ground up; a module may import its own floor's modules and lower ones.
FLOORS = (
    ("detrdistill.config", "detrdistill.overrides", "detrdistill.box_ops", "detrdistill.distributed",
     "detrdistill.precision"),
    ("detrdistill.data",),
    ("detrdistill.matching", "detrdistill.evaluate"),
    ("detrdistill.models",),
    ("detrdistill.inference", "detrdistill.predict"),
    ("detrdistill.losses",),
    ("detrdistill.distiller",),
    ("detrdistill.training",),
    ("detrdistill.runs",),
    ("detrdistill.bench", "detrdistill.analysis", "detrdistill.demo", "detrdistill.notebook_run"),
    ("detrdistill.cli",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    for floor, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return floor
    raise AssertionError(f"{module} is on no floor of tests/test_layering.py: add it to FLOORS")


def imports() -> dict[str, set[str]]:
    """{module: the detrdistill modules it imports} (an ``from a import b`` of a submodule counts as a.b)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("detrdistill")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("detrdistill"):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}  # a package's own face
    return graph


def test_no_import_runs_back_up():
    upward = [f"{source} (floor {floor_of(source)}) imports {target} (floor {floor_of(target)})"
              for source, targets in imports().items() for target in targets if floor_of(target) > floor_of(source)]
    assert upward == []


def test_no_import_loop():
    graph = imports()
    loops, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                loops.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert loops == []
