"""The layout rules of DESIGN.md ("Layout"), checked on the source: imports flow one way (no circles),
the single-step and multistep samplers stay independent, and files stay short.

Every module under difflab/ is parsed with ``ast``; its imports (module level and inside functions)
become edges ``module -> imported difflab module``. ``from difflab.a import b`` is an edge to the
module ``difflab.a.b`` when that is a module, else to ``difflab.a``; a package is its ``__init__``.
``import difflab`` itself is left out: the top-level ``__init__`` imports only lazily, by string.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "difflab"
MAX_LINES = 450


def _modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file; a package is named by its ``__init__.py``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(node: ast.AST, module: str, path: Path, modules) -> list[str]:
    """The difflab modules one import statement names (before dropping the top-level package)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = node.module or ""
    if node.level:  # relative: from . import x, from ..a import b
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line of the first import of it}."""
    modules, top = _modules(package_dir), package_dir.name
    graph = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, module, path, modules):
                if target in modules and target not in (top, module):
                    edges[target] = min(node.lineno, edges.get(target, node.lineno))
    return graph


def _strongly_connected(graph) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each holds a cycle)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _shortest_cycle(graph, component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, by breadth-first search inside it."""
    start, inside = component[0], set(component)
    parents, frontier = {start: None}, [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [start] + path[::-1][1:] + [start]
                if w in inside and w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def _describe(graph, component: list[str]) -> str:
    """The component's modules, one shortest cycle through them, and the import lines that make it."""
    paths, cycle = _modules(PACKAGE_DIR), _shortest_cycle(graph, component)
    lines = [f"modules in a circle: {', '.join(component)}", "  cycle: " + " -> ".join(cycle)]
    for a, b in zip(cycle, cycle[1:]):
        lines.append(f"    {paths[a].relative_to(PACKAGE_DIR.parent)}:{graph[a][b]} imports {b}")
    return "\n".join(lines)


def test_import_graph_has_no_cycle():
    graph = import_graph()
    components = _strongly_connected(graph)
    assert not components, "difflab modules import each other (DESIGN.md: imports flow downward only):\n" + \
        "\n".join(_describe(graph, c) for c in components)


def test_single_step_and_multistep_samplers_import_only_base():
    graph = import_graph()
    for module in ("difflab.samplers.single", "difflab.samplers.multistep"):
        from_samplers = {m for m in graph[module] if m == "difflab.samplers" or m.startswith("difflab.samplers.")}
        assert from_samplers <= {"difflab.samplers.base"}, \
            f"{module} imports {sorted(from_samplers - {'difflab.samplers.base'})}; it may import difflab.samplers.base only"


def test_the_web_app_sits_on_the_pipelines_only():
    """DESIGN.md: serve/ -> pipelines only; nothing below imports the app (and the CLI is above it)."""
    graph = import_graph()
    above = ("difflab.serve", "difflab.cli", "difflab.train", "difflab.metrics")
    for module, edges in graph.items():
        if module.startswith("difflab.serve"):
            assert not [m for m in edges if m.startswith(above) and not m.startswith("difflab.serve")], module
        elif module != "difflab.cli":
            assert not [m for m in edges if m.startswith("difflab.serve")], module


def test_files_are_short():
    long = {str(path.relative_to(PACKAGE_DIR.parent)): n for path in sorted(PACKAGE_DIR.rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (DESIGN.md: ~400 lines, one idea each): {long}"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_graph_sees_imports_of_every_kind(tmp_path):
    """Guards the parser and the cycle finder on a small package of known imports."""
    _write(tmp_path, {
        "pkg/__init__.py": "import importlib\n",
        "pkg/a.py": "import os\n\ndef f():\n    from pkg.sub import b, CONSTANT\n",
        "pkg/sub/__init__.py": "from . import b\nCONSTANT = 1\n",
        "pkg/sub/b.py": "import pkg\nimport pkg.c\n",
        "pkg/sub/d.py": "from ..a import f\nfrom .b import g\n",
        "pkg/c.py": "from pkg import a\n",
    })
    graph = import_graph(tmp_path / "pkg")
    assert graph == {"pkg": {}, "pkg.a": {"pkg.sub.b": 4, "pkg.sub": 4}, "pkg.c": {"pkg.a": 1},
                     "pkg.sub": {"pkg.sub.b": 1}, "pkg.sub.b": {"pkg.c": 2},
                     "pkg.sub.d": {"pkg.a": 1, "pkg.sub.b": 2}}
    components = _strongly_connected(graph)
    assert components == [["pkg.a", "pkg.c", "pkg.sub", "pkg.sub.b"]]
    assert _shortest_cycle(graph, components[0]) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
