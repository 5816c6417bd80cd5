"""The package's shape (docs/ARCHITECTURE.md), read from the source with `ast`: imports only go down the layers,
no import circles (function-level and type-checking imports count), no module over 400 lines and no function
over 80 lines (the top-level scripts' functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "bsr_hub"
LAYERS = ("core", "data", "inference", "models", "evaluation", "training", "demo", "commands")
"""Lowest first: a module imports only from its own layer or a lower one; the root `bsr_hub/__init__.py` sits on
top of them all, and no module inside imports it."""
SCRIPTS = ("train.py", "evaluate.py", "hubconf.py")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The rank of a module's layer; the root package ranks above every layer."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def imported_modules(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The bsr_hub modules an import statement loads: `from .x import y` is module `.x.y` when that is a
    module, else the package or module `.x` that defines the name `y`."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES}
    if len(found) < len(node.names) and source in MODULES:
        found.add(source)
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        nodes = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
        graph[module] = set().union(*(imported_modules(module, n) for n in nodes)) if nodes else set()
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a set of modules importing each
    other around a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_every_module_belongs_to_a_layer():
    strays = [m for m in MODULES if m != "bsr_hub" and m.split(".")[1] not in LAYERS]
    assert not strays, f"modules outside the layers {LAYERS}: {strays} (docs/ARCHITECTURE.md says where things go)"


def test_imports_only_go_down():
    upward = [
        f"{m} ({LAYERS[layer(m)]}) imports {t} ({'the root package' if layer(t) == len(LAYERS) else LAYERS[layer(t)]})"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if layer(t) > layer(m)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = import_graph()
    loops = [
        " ; ".join(f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component)
        for component in circles(graph)
    ]
    assert not loops, "import circles:\n" + "\n".join(loops)


def test_modules_and_functions_stay_small():
    big = [f"{p.relative_to(REPO_ROOT)} ({n} lines)" for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    long = [f for p in [*MODULES.values(), *(REPO_ROOT / s for s in SCRIPTS)] for f in long_functions(p)]
    assert not big and not long, f"modules over {MAX_MODULE_LINES} lines: {big}; functions over {MAX_FUNCTION_LINES}: {long}"


@pytest.mark.parametrize("kind", ["upward", "circle"])
def test_the_checks_catch_what_they_look_for(kind):
    """The checks above fail on the mistakes they exist for: an upward import, a circle through a lazy import."""
    graph = {"bsr_hub.core.files": set(), "bsr_hub.models.card": set(), "bsr_hub.models.modeling": set()}
    if kind == "upward":
        graph["bsr_hub.core.files"].add("bsr_hub.models.card")
        assert [t for m, ts in graph.items() for t in ts if layer(t) > layer(m)] == ["bsr_hub.models.card"]
    else:
        graph["bsr_hub.models.card"].add("bsr_hub.models.modeling")
        graph["bsr_hub.models.modeling"].add("bsr_hub.models.card")
        assert circles(graph) == [["bsr_hub.models.card", "bsr_hub.models.modeling"]]


def test_a_function_level_import_is_an_edge():
    """A lazy import inside a function counts: it is how a circle hides."""
    source = "def f():\n    from .modeling import BSRModel\n    return BSRModel\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    assert imported_modules("bsr_hub.models.card", node) == {"bsr_hub.models.modeling"}
