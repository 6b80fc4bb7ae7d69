"""Package layering, checked statically with ``ast`` (nothing is imported).

    services            shared ground: imports none of the others
    compiler_svc  npu_daemon  client      each imports services, never each other

and the module import graph inside these four packages has no cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("services", "compiler_svc", "npu_daemon", "client")
PEERS = ("compiler_svc", "npu_daemon", "client")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        assert (ROOT / pkg / "__init__.py").is_file(), f"{pkg} is not a package"
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mods[_module_name(path)] = path
    return mods


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, tree: ast.AST) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, runtime?) for every import in the file, wherever it sits.

    ``from X import Y`` yields X, and X.Y when that is a module; relative imports are resolved.
    Imports under ``if TYPE_CHECKING:`` are marked as not executed at run time.
    """
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for inner in node.body:
                typing_only.update(id(n) for n in ast.walk(inner))
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        runtime = id(node) not in typing_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, runtime
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target, node.lineno, runtime
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    yield sub, node.lineno, runtime


def _top(name: str) -> str:
    return name.split(".")[0]


def _all_imports() -> list[tuple[str, str, int, bool]]:
    out = []
    for module, path in MODULES.items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as e:  # pragma: no cover - reported as a failure
            pytest.fail(f"{path} does not parse: {e}")
        for target, line, runtime in _imports(module, tree):
            out.append((module, target, line, runtime))
    return out


def test_modules_found() -> None:
    for pkg in PACKAGES:
        assert pkg in MODULES
    assert "services.protocol" in MODULES and "npu_daemon.server" in MODULES


def test_services_imports_no_other_package() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
           for m, t, line, _ in _all_imports() if _top(m) == "services" and _top(t) in PEERS]
    assert not bad, "services must not depend on the packages built on it:\n" + "\n".join(bad)


def test_peer_packages_do_not_import_each_other() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
           for m, t, line, _ in _all_imports()
           if _top(m) in PEERS and _top(t) in PEERS and _top(t) != _top(m)]
    assert not bad, "compiler_svc, npu_daemon and client talk over the wire only:\n" + "\n".join(bad)


def _graph(exclude: frozenset[tuple[str, str]] = frozenset()) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, t, _, runtime in _all_imports():
        # A package's __init__ importing its own names (`from client import session` in
        # client/__init__.py) is not a cycle; type-only imports never run.
        if runtime and t in MODULES and t != m and (m, t) not in exclude:
            graph[m].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def test_cycle_finder_itself() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": {"d"}, "d": {"b"}, "e": {"f"}, "f": {"e"}}) == [
        ["b", "c", "d"], ["e", "f"]]


def test_relative_imports_are_resolved() -> None:
    tree = ast.parse("from . import protocol\nfrom .errors import X\nfrom .. import y\n")
    got = {t for t, _, _ in _imports("services.server", tree)}
    assert {"services", "services.protocol", "services.errors"} <= got


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
