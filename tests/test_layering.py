"""Package layering, checked statically with ``ast`` (nothing is imported).

    npusim (the SDK-shaped facade)        imports any of them
    compiler_svc  npu_daemon  client      each imports services, never each other
    services                              shared ground: imports none of the others

every module is named as installed (``npusim.services.protocol``), a string naming another
package's module (an import or a ``python -m`` hidden in a string) counts as an edge too, no
module imports the old top-level names, and the import graph inside the packages has no cycles.
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
OLD_NAMES = PACKAGES  # what the packages were called at the top level before the namespace


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "npusim" else ["npusim", *parts])


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in (*PACKAGES, "npusim"):
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
    """The package a module belongs to: services, compiler_svc, npu_daemon, client, or npusim (the facade)."""
    parts = name.split(".")
    if parts[0] != "npusim":
        return parts[0]
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "npusim"


def _strings(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Modules named in string constants other than docstrings: ``"npusim.client._worker"``,
    ``"npusim.compiler_svc.estimate:estimate_cmd"``."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for word in node.value.split():
                name = word.partition(":")[0].strip("`'\"(),")
                if name in MODULES and _top(name) in PACKAGES:
                    yield name, node.lineno


def _all_imports() -> list[tuple[str, str, int, bool]]:
    out = []
    for module, path in MODULES.items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as e:  # pragma: no cover - reported as a failure
            pytest.fail(f"{path} does not parse: {e}")
        for target, line, runtime in _imports(module, tree):
            out.append((module, target, line, runtime))
        for target, line in _strings(tree):
            out.append((module, target, line, False))  # an edge for layering, not for cycles
    return out


def test_modules_found() -> None:
    for pkg in PACKAGES:
        assert f"npusim.{pkg}" in MODULES
    assert "npusim.services.protocol" in MODULES and "npusim.npu_daemon.server" in MODULES
    assert "npusim.runtime.session" in MODULES


def test_no_module_imports_the_old_top_level_names() -> None:
    trees = [(p, ast.parse(p.read_text(encoding="utf-8"))) for d in (*PACKAGES, "npusim", "tests", "benchmarks",
                                                                    "examples") for p in sorted((ROOT / d).rglob("*.py"))]
    bad = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, tree in trees for n in ast.walk(tree)
           if (isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] in OLD_NAMES)
           or (isinstance(n, ast.Import) and any(a.name.split(".")[0] in OLD_NAMES for a in n.names))]
    assert not bad, "import these as npusim.<package>:\n" + "\n".join(bad)


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
        # A package's __init__ importing its own names (`from npusim.client import session` in
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
    got = {t for t, _, _ in _imports("npusim.services.server", tree)}
    assert {"npusim.services.protocol", "npusim.services.errors"} <= got


def test_a_module_path_in_a_string_is_an_edge() -> None:
    tree = ast.parse('cmd = ["-m", "npusim.client._worker"]\nx = "npusim.compiler_svc.estimate:estimate_cmd"\n')
    assert {t for t, _ in _strings(tree)} == {"npusim.client._worker", "npusim.compiler_svc.estimate"}


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
