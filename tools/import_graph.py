"""The first-party import graph at package level: python tools/import_graph.py [--modules]

Reads every .py file of the repository with ``ast`` (nothing is imported or run) and prints, for each pair of
layers, how many import statements go from one to the other; ``lazy`` counts those inside a function body,
``dynamic`` the module names handed to ``importlib.import_module``. The layers are the top-level folders, with
``lia_model`` split three ways: ``lia_model`` (the pure core), ``lia_model[io]`` (the loaders of input files:
profiles, model configs) and ``lia_model[cli]`` (the ``lia`` command); the command modules of calibrate,
runtime and studies are ``calibrate[cli]`` and so on. Cycles between layers are listed at the end.
``tests/test_layering.py`` checks its rules on the same data (``module_imports``).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("lia_model", "hwprofiles", "calibrate", "runtime", "studies", "tests", "tools", "peers")
# Entry points: the `lia` command (typer apps, argument parsing, tables) and the scripts kept inside packages.
# Everything else in lia_model is the model.
CLI_MODULES = frozenset(
    {
        "lia_model.__main__",
        "lia_model.optimizer.benchmark",
        "calibrate.cli",
        "calibrate.__main__",
        "runtime.cli",
        "runtime.run_cli",
        "studies.cli",
        "studies.__main__",
        "runtime.__main__",
    }
)
# The lia command's own package: every module in it is CLI.
CLI_PACKAGE = "lia_model.cli"
# The file loaders of the core (profiles on disk, Hugging Face configs): the only lia_model modules that read files.
IO_MODULES = frozenset({"lia_model.profiles", "lia_model.inputs"})


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, dotted
    target: str  # imported module (first-party) or top-level third-party package
    line: int
    lazy: bool  # inside a function body (runs only when the function is called)
    dynamic: bool  # a name given to importlib.import_module


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def python_files(root: Path = ROOT) -> list[Path]:
    files: list[Path] = []
    for top in FIRST_PARTY:
        base = root / top
        if base.is_dir():
            files += sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _known_modules(root: Path) -> set[str]:
    return {module_name(p, root) for p in python_files(root)}


def _resolve(name: str, known: set[str]) -> str:
    """The first-party module a dotted name refers to (the longest known prefix), or its top-level package."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return parts[0]


def _imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> list[Edge]:
    edges: list[Edge] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    edges.append(Edge(module, _resolve(alias.name, known), child.lineno, lazy, False))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[: len(package) - (child.level - 1)]
                    base = ".".join(package + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    edges.append(
                        Edge(module, _resolve(full if full in known else base, known), child.lineno, lazy, False)
                    )
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and _calls_import_module(child):
                # importlib.import_module(name) over names spelled out in the same function
                for const in ast.walk(child):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str) and const.value in known:
                        edges.append(Edge(module, const.value, const.lineno, True, True))
            visit(child, inner)

    visit(tree, False)
    return edges


def _calls_import_module(func: ast.AST) -> bool:
    for node in ast.walk(func):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name == "import_module":
                return True
    return False


def module_imports(root: Path = ROOT) -> dict[str, list[Edge]]:
    """Every import statement of every first-party module, by module."""
    known = _known_modules(root)
    out: dict[str, list[Edge]] = {}
    for path in python_files(root):
        name = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        out[name] = _imports_of(tree, name, path.name == "__init__.py", known)
    return out


def layer(module: str) -> str:
    """The layer of a first-party module (see the module docstring)."""
    top = module.split(".")[0]
    if module in CLI_MODULES or module == CLI_PACKAGE or module.startswith(CLI_PACKAGE + "."):
        return f"{top}[cli]"
    if module in IO_MODULES:
        return f"{top}[io]"
    return top


def layer_graph(imports: dict[str, list[Edge]]) -> dict[tuple[str, str], list[Edge]]:
    """Import statements between layers (one per statement and imported module, however many names it takes)."""
    graph: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    for module, edges in imports.items():
        for e in dict.fromkeys(edges):
            if e.target.split(".")[0] not in FIRST_PARTY:
                continue
            a, b = layer(module), layer(e.target)
            if a != b:
                graph[(a, b)].append(e)
    return dict(graph)


def cycles(graph: dict[tuple[str, str], list[Edge]]) -> list[list[str]]:
    """The strongly connected groups of more than one layer (Tarjan)."""
    succ: dict[str, set[str]] = defaultdict(set)
    for a, b in graph:
        succ[a].add(b)
    nodes = sorted({n for pair in graph for n in pair})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in nodes:
        if v not in index:
            strong(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", action="store_true", help="also list the module-level imports behind each edge")
    args = ap.parse_args(argv)
    graph = layer_graph(module_imports())
    print(f"{'from':<16} {'to':<16} {'imports':>7} {'lazy':>5} {'dynamic':>7}")
    for (a, b), edges in sorted(graph.items()):
        print(f"{a:<16} {b:<16} {len(edges):>7} {sum(e.lazy for e in edges):>5} {sum(e.dynamic for e in edges):>7}")
        if args.modules:
            for e in sorted(edges, key=lambda e: (e.source, e.line)):
                print(f"    {e.source}:{e.line} -> {e.target}{' (lazy)' if e.lazy else ''}")
    found = cycles(graph)
    print("cycles: " + ("; ".join(" <-> ".join(c) for c in found) if found else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
