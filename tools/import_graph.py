"""The package's import graph: cycles between modules, and library modules that import phases/.

    python tools/import_graph.py            # cycles and boundary crossings, one per line; exit 1 if any
    python tools/import_graph.py --edges    # every edge (module -> module it imports)

Every `import lorascope...` / `from lorascope... import ...` counts, wherever it stands (module level, inside a
function, under TYPE_CHECKING): a function-level import is still a dependency a reader must follow. `from
lorascope.x import y` where y is itself a module counts as an edge to lorascope.x.y. A package's own __init__ is a
module like the others.

The boundary (design.md): only the modules above the phases (the CLI, the local runner, the Kubernetes renderer and
launcher) and the phases themselves import lorascope.phases; everything below them (data, models, methods, tasks,
training, analysis, reporting, serving, store) receives plain values.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pkg"
ABOVE_PHASES = ("lorascope.cli", "lorascope.runner", "lorascope.__main__", "lorascope.k8s", "lorascope.phases")


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted((root / "lorascope").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # lorascope.x.func -> lorascope.x
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _is_package_parent(child: str, parent: str) -> bool:
    """A package importing its own submodule (lorascope.x -> lorascope.x.y) is how a package re-exports, not a
    cycle a reader must untangle: such edges are left out of the cycle search when the submodule imports back."""
    return child.startswith(parent + ".")


def boundary_crossings(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, ts in graph.items() for t in ts
                  if (t == "lorascope.phases" or t.startswith("lorascope.phases."))
                  and not m.startswith(ABOVE_PHASES))  # fmt: skip


def context_parameters(mods: dict[str, Path]) -> list[tuple[str, str]]:
    """(module, function) for every function below the phases that takes the phase context (a parameter named
    `ctx`): such a function reads bundles or the run itself, which is the phase's job."""
    out = []
    for name, path in mods.items():
        if name.startswith(ABOVE_PHASES):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                if "ctx" in params:
                    out.append((name, node.name))
    return sorted(out)


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    pruned = {m: {t for t in ts if not _is_package_parent(t, m)} for m, ts in graph.items()}
    return cycles(pruned)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", action="store_true", help="print every edge")
    args = ap.parse_args()
    graph = edges(modules())
    if args.edges:
        for m in sorted(graph):
            for t in sorted(graph[m]):
                print(f"{m} -> {t}")
        return 0
    found = module_cycles(graph)
    crossings = boundary_crossings(graph)
    takes_ctx = context_parameters(modules())
    for comp in found:
        print("cycle: " + " <-> ".join(comp))
    for m, t in crossings:
        print(f"imports phases: {m} -> {t}")
    for m, fn in takes_ctx:
        print(f"takes the phase context: {m}.{fn}")
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} edges, {len(found)} cycles, "
          f"{len(crossings)} library imports of phases/, {len(takes_ctx)} library functions taking ctx")  # fmt: skip
    return 1 if found or crossings or takes_ctx else 0


if __name__ == "__main__":
    sys.exit(main())
