"""The package's modules import each other without a circle.

Every .py module of the installed lgmstm is parsed (not imported) and each of
its imports of another lgmstm module is an edge: imports inside functions
count too (a lazy import only hides a circle until the function runs), those
under ``if TYPE_CHECKING:`` do not (they never run). A circle fails the test
with its modules listed.

The parser and the cycle finder are tested on small made-up cases first.
"""
from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import textwrap
from pathlib import Path

PACKAGE = "lgmstm"


# -- the import graph --------------------------------------------------------------

def package_modules(package=PACKAGE):
    """{module name: (path of its .py source or None, is a package)} of every
    module in the package: .py files, compiled extensions and .pyi stubs (a
    stub stands for a compiled module in a tree not built yet). The package
    is found where `import package` would find it (what its __file__ would
    be), without importing it: an import circle cannot stop this test."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin, f"{package} is not installed"
    root = Path(spec.origin).parent
    suffixes = [".py", ".pyi", *importlib.machinery.EXTENSION_SUFFIXES]
    modules = {}
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if not path.is_file() or not all(part.isidentifier() for part in parts[:-1]):
            continue  # __pycache__, a data folder
        suffix = max((s for s in suffixes if path.name.endswith(s)), key=len, default=None)
        stem = path.name[: -len(suffix)] if suffix else ""
        if not stem.isidentifier():
            continue
        is_package = stem == "__init__"
        name = ".".join((package,) + parts[:-1] + (() if is_package else (stem,)))
        source = path if suffix == ".py" else None
        modules[name] = (source or modules.get(name, (None,))[0], is_package)
    return modules


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _bound_names(statements):
    """Names a module binds at its top level (those `from module import name`
    takes from it rather than from a submodule), in the bodies of its ifs,
    trys and withs too, not in its functions."""
    names = set()
    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(name.id for target in targets for name in ast.walk(target)
                         if isinstance(name, ast.Name))
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if isinstance(block, list) and not isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names |= _bound_names(block)
    return names


class _Imports(ast.NodeVisitor):
    """The modules one module imports, at any depth, but not under
    `if TYPE_CHECKING:` (its `else:` does run)."""

    def __init__(self, module, is_package, known, packages):
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.packages = packages  # package -> names its __init__ binds
        self.found = set()

    def visit_If(self, node):
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            self.found.add(alias.name)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.package.split(".")
            if node.level - 1 >= len(base):
                return  # beyond the top package: an ImportError, not an edge
            base = ".".join(base[: len(base) - (node.level - 1)])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module
        if base not in self.packages:
            self.found.add(base)  # `from module import name`
            return
        # `from package import name`: the submodule package.name if there is
        # one, else the name the package's __init__ binds (or its module
        # __getattr__ makes), else a submodule this tree lacks (generated, say)
        bound = self.packages[base]
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.known or not (
                    alias.name == "*" or alias.name in bound or "__getattr__" in bound):
                self.found.add(submodule)
            else:
                self.found.add(base)


def module_imports(source, module, is_package, known, packages):
    """The modules in `known` that `source` (module `module`) imports;
    `packages`: {package: names its __init__ binds at its top level}."""
    visitor = _Imports(module, is_package, known, packages)
    visitor.visit(source if isinstance(source, ast.AST) else ast.parse(source))
    return {name for name in visitor.found if name in known and name != module}


def import_graph(package=PACKAGE):
    """{module: modules of the package it imports} for the package's .py modules."""
    modules = package_modules(package)
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path))
             for name, (path, _) in modules.items() if path is not None}
    packages = {name: _bound_names(trees[name].body) if name in trees else set()
                for name, (_, is_package) in modules.items() if is_package}
    return {name: sorted(module_imports(trees[name], name, modules[name][1], modules,
                                        packages))
            for name in trees}


def find_cycles(graph):
    """For each group of modules that import each other in a circle (each
    strongly connected component of more than one node), a closed walk
    [a, b, ..., a] through all of them; sorted, [] when there is none."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(_walk_through(graph, component) for component in components)


def _shortest_path(graph, component, start, goal):
    """[start, ..., goal] by the fewest edges within the component (goal may
    be start: then a way back to it)."""
    came_from, frontier = {}, [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, ())):
                if target in component and target not in came_from:
                    came_from[target] = node
                    if target == goal:
                        path = [goal]
                        while path[-1] != start or len(path) == 1:
                            path.append(came_from[path[-1]])
                        return path[::-1]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no path from {start} to {goal} in {sorted(component)}")


def _walk_through(graph, component):
    """A closed walk from the component's first member through all its members
    (a simple cycle when the component is one)."""
    start = min(component)
    walk, seen = [start], {start}
    for member in sorted(component):
        if member not in seen:
            path = _shortest_path(graph, component, walk[-1], member)
            walk += path[1:]
            seen.update(path)
    return walk + _shortest_path(graph, component, walk[-1], start)[1:]


# -- the finder on made-up graphs -----------------------------------------------

def test_find_cycles_finds_a_known_cycle():
    graph = {"a": ["b"], "b": ["c", "d"], "c": ["a"], "d": [], "e": ["a"]}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_find_cycles_walks_each_circle_through_all_its_modules():
    graph = {"a": ["b", "c"], "b": ["a"], "c": ["a"],  # one component: a <-> b, a <-> c
             "x": ["y"], "y": ["x"], "z": ["z"]}  # a second one; a self-import is no circle
    assert find_cycles(graph) == [["a", "b", "a", "c", "a"], ["x", "y", "x"]]


def test_find_cycles_accepts_an_acyclic_graph():
    graph = {"a": ["b", "c"], "b": ["c", "d"], "c": ["d"], "d": [], "e": ["a", "d"]}
    assert find_cycles(graph) == []
    assert find_cycles({}) == []


def test_module_imports_resolves_and_skips_type_checking():
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e", "pkg.sub", "pkg.sub.f",
             "pkg.g", "pkg.h", "pkg.m"}
    packages = {"pkg": {"helper", "sub"}, "pkg.sub": set()}
    source = textwrap.dedent("""
        from __future__ import annotations
        import os
        from typing import TYPE_CHECKING
        import numpy as np
        from . import a, helper  # pkg.a; a name pkg's __init__ binds: pkg
        from . import generated  # a module this tree lacks: no edge
        from .b import thing  # pkg.b
        from .sub import f  # a submodule: pkg.sub.f
        import pkg.c as c

        if TYPE_CHECKING:
            from .d import Hint  # never runs
        else:
            from .h import Real  # runs

        def lazy():
            from pkg.e import later  # a lazy import is an import
            if typing.TYPE_CHECKING:
                from . import g  # never runs
    """)
    assert module_imports(source, "pkg.m", False, known, packages) == {
        "pkg", "pkg.a", "pkg.b", "pkg.sub.f", "pkg.c", "pkg.h", "pkg.e"}
    # in a package's __init__, "." is the package itself; no module imports itself
    assert module_imports("from . import f\nfrom .. import a\nfrom . import g\n", "pkg.sub",
                          True, known, packages) == {"pkg.sub.f", "pkg.a"}
    assert module_imports("from .sub import f\n", "pkg.sub.f", False, known, packages) == set()
    # a package with a module __getattr__ may make any name
    assert module_imports("from pkg import generated\n", "pkg.a", False, known,
                          {"pkg": {"__getattr__"}}) == {"pkg"}


def test_bound_names_are_the_top_level_ones():
    tree = ast.parse(textwrap.dedent("""
        import os.path
        from .x import y as z
        A, (B, C) = 1, (2, 3)
        D: int = 4
        def f():
            local = 1
        class K:
            attribute = 1
        try:
            from .fast import E
        except ImportError:
            E = None
        if True:
            F = 1
    """))
    assert _bound_names(tree.body) == {"os", "z", "A", "B", "C", "D", "f", "K", "E", "F"}


# -- the package ---------------------------------------------------------------------

def test_the_graph_is_read():
    graph = import_graph()
    assert {PACKAGE, f"{PACKAGE}.stm", f"{PACKAGE}.kernels"} <= set(graph), graph
    assert f"{PACKAGE}._validation" in graph[f"{PACKAGE}.stm"], graph
    assert f"{PACKAGE}._dense" in graph[f"{PACKAGE}.kernels"], graph  # compiled modules too


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "modules of lgmstm import each other in a circle:\n" + "\n".join(
        "  " + " -> ".join(cycle) for cycle in cycles)
