"""No import cycle in src/netfence: data flows down the layers once (profile, policy,
backends, runtimes, cli), and inside a layer each module imports only below itself.

The graph is read from the source with ast, every import counted: at module level, inside
functions (a lazy import still runs) and under TYPE_CHECKING (a cycle there is a cycle in
the design, and the first runtime import along it closes it). An edge goes to the module
named (`from a.b import c` names the module a.b.c when there is one, else a.b); importing
a.b.c also runs a/b/__init__.py, but that package edge is how Python packages work, not
a cycle, and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import netfence

ROOT = Path(netfence.__file__).parent
PACKAGE = "netfence"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The netfence modules `name` (at `path`) imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: level 1 is this module's package (the module itself for one).
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports the submodule; any other name comes from pkg.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as one
    cycle through its modules, sorted for a stable message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A path a -> ... -> a inside one component, to show in the failure message."""
    members = set(component)
    start = component[0]
    path = [start]
    seen = {start}
    node = start
    while True:
        nxt = sorted(graph[node] & members, key=lambda m: (m in seen and m != start, m))[0]
        path.append(nxt)
        if nxt == start or nxt in seen:
            return path[path.index(nxt):]
        seen.add(nxt)
        node = nxt


def test_the_graph_counts_every_kind_of_import(tmp_path: Path) -> None:
    graph = import_graph()
    assert {"netfence.profile", "netfence.profile.hosts"} <= graph["netfence.policy.policy"]
    assert "netfence.backends.envoy" in graph["netfence.backends"]  # inside get_backend
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from .. import Thing\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.other import Name\n"
        "def later():\n"
        "    import pkg.sub.deep\n"
    )
    known = {"pkg", "pkg.sub", "pkg.sub.mod", "pkg.sub.sibling", "pkg.other", "pkg.sub.deep"}
    assert imported("pkg.sub.mod", source, known) == {
        "pkg.sub.sibling", "pkg", "pkg.other", "pkg.sub.deep"}


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_netfence() -> None:
    graph = import_graph()
    found = [f"{' -> '.join(one_cycle(graph, c))} (the cycle holds {', '.join(c)})"
             for c in cycles(graph)]
    assert not found, "import cycles:\n" + "\n".join(found)
