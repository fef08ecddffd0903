"""The package's structure: one-way imports, no private names across modules, protobuf only for .pb.

These tests parse the package with ``ast``; they fail on an import cycle inside
``jaxmir`` (imports inside functions included: a deferred import is still a
dependency), on ``from x import _name`` across modules, and on ``obj._attr``
where ``obj`` is not ``self``/``cls`` (private attributes of another module's
objects). Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path

from conftest import require

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxmir"
# every folder of the repository that holds Python (what pyflakes and the line-length check read)
PYTHON_FOLDERS = ("jaxmir", "tests", "benchmarks", "tools", "examples")
MAX_LINE_LENGTH = 100


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(), str(path))
            for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if hasattr(child, "lineno"):
                    lines.add(child.lineno)
    return lines


def imports_of(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The jaxmir modules ``name`` imports (``from jaxmir import x`` counts x when it is a
    module)."""
    skipped = _type_checking_blocks(tree)
    found = set()
    package = name if (PACKAGE / "/".join(name.split(".")[1:]) / "__init__.py").exists() \
        else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {m for m in found if m in known and m != name}


def with_packages(name: str, imported: set[str], known: set[str]) -> set[str]:
    """``imported`` and the packages whose ``__init__`` Python runs first to import them
    (``jaxmir.collection`` for ``jaxmir.collection.rows``), but for ``name``'s own packages,
    initialised already when ``name`` runs (``jaxmir``'s is lazy: it imports no module)."""
    found = set(imported)
    for module in imported:
        parts = module.split(".")
        for depth in range(2, len(parts)):
            package = ".".join(parts[:depth])
            if package in known and not name.startswith(package + "."):
                found.add(package)
    return found - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle of ``graph`` (module -> the modules it imports), or ``None``."""
    state: dict[str, int] = {}
    stack_path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack_path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack_path[stack_path.index(target):] + [target]
            if not state.get(target) and (cycle := visit(target)):
                return cycle
        stack_path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if not state.get(name) and (cycle := visit(name)):
            return cycle
    return None


def test_no_import_cycles():
    trees = modules()
    known = set(trees)
    graph = {name: with_packages(name, imports_of(name, tree, known), known)
             for name, tree in trees.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_a_cycle_through_a_package_init():
    """The check once meant to count a package's __init__ and added nothing: a cycle through
    one (a module importing jaxmir.collection.rows runs jaxmir/collection/__init__.py first)
    could not fail it."""
    known = {"jaxmir.model", "jaxmir.collection", "jaxmir.collection.rows",
             "jaxmir.collection.commands"}
    imports = {"jaxmir.model": {"jaxmir.collection.rows"},
               "jaxmir.collection": {"jaxmir.collection.commands"},
               "jaxmir.collection.commands": {"jaxmir.model"},
               "jaxmir.collection.rows": set()}
    assert find_cycle(imports) is None  # only the package's own edges
    graph = {name: with_packages(name, found, known) for name, found in imports.items()}
    assert find_cycle(graph) == ["jaxmir.collection", "jaxmir.collection.commands",
                                 "jaxmir.model", "jaxmir.collection"]


def test_models_import_only_their_layers_and_the_spec():
    trees = modules()
    known = set(trees)
    allowed = {"jaxmir.spec", "jaxmir.errors", "jaxmir.promotion"}  # promotion: JAX alone
    for name, tree in trees.items():
        if name.startswith("jaxmir.models"):
            outside = {m for m in imports_of(name, tree, known)
                       if not m.startswith("jaxmir.models") and m not in allowed}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_protobuf_only_inside_tfgraph():
    for name, tree in modules().items():
        if name.startswith("jaxmir.tfgraph"):
            continue
        text = ast.unparse(tree)
        assert "google.protobuf" not in text, f"{name} uses protobuf outside jaxmir.tfgraph"


# Documented standard-library functions whose names start with an underscore.
STDLIB_PUBLIC = {"os._exit"}


def private_names_defined(tree: ast.Module) -> set[str]:
    """``_names`` a module defines itself: its functions and methods, and ``self._attr`` it sets."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_")}


def test_no_private_names_across_modules():
    problems = []
    for name, tree in modules().items():
        own = private_names_defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxmir"):
                problems += [f"{name}: from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                owner = node.value
                if node.attr not in own and ast.unparse(node) not in STDLIB_PUBLIC and not (
                        isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    problems.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def unused_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, name)`` of names a module imports and never reads (``__all__`` re-exports and
    names quoted in strings, e.g. string annotations, count as read)."""
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update({(a.asname or a.name).split(".")[0]: node.lineno for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            imported.update({a.asname or a.name: node.lineno for a in node.names})
    read = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    read |= {node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return sorted((line, name) for name, line in imported.items() if name not in read)


def test_no_unused_imports():
    problems = [f"{name}:{line}: {imported}" for name, tree in modules().items()
                for line, imported in unused_imports(tree)]
    assert not problems, "imported but never used:\n" + "\n".join(problems)
    # the check itself finds one
    assert (unused_imports(ast.parse("import os\nfrom a import b, c\nprint(c)"))
            == [(1, "os"), (2, "b")])


def test_pyflakes_finds_nothing():
    """pyflakes over everything in the repository that is Python: undefined names, unused
    imports and variables, redefinitions, placeholder-less f-strings."""
    api = require("pyflakes.api")
    from pyflakes.reporter import Reporter

    out = io.StringIO()
    folders = [str(ROOT / folder) for folder in PYTHON_FOLDERS]
    assert api.checkRecursive(folders, Reporter(out, out)) == 0, out.getvalue()
    # the check itself finds one
    assert api.check("import os\n", "probe.py", Reporter(io.StringIO(), io.StringIO())) == 1


def long_lines(paths, root: Path = ROOT) -> list[str]:
    """``path:line (length)`` of every line of ``paths`` over :data:`MAX_LINE_LENGTH` characters."""
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if len(line) > MAX_LINE_LENGTH:
                found.append(f"{path.relative_to(root)}:{number} ({len(line)})")
    return found


def test_no_python_line_is_longer_than_100_characters(tmp_path):
    """Every Python file that pyflakes reads keeps its lines within 100 characters."""
    paths = sorted(path for folder in PYTHON_FOLDERS for path in (ROOT / folder).rglob("*.py"))
    assert len(paths) > 100  # the walk finds the repository's files
    found = long_lines(paths)
    assert not found, (f"{len(found)} line(s) over {MAX_LINE_LENGTH} characters:\n"
                       + "\n".join(found[:20]))
    # the check itself finds one, and counts characters, not bytes
    probe = tmp_path / "probe.py"
    probe.write_text("x = 1\n" + "#" * MAX_LINE_LENGTH + "\n" + "ü" * 60 + "\n"
                     + "y" * (MAX_LINE_LENGTH + 1) + "\n", encoding="utf-8")
    assert long_lines([probe], tmp_path) == [f"probe.py:4 ({MAX_LINE_LENGTH + 1})"]


def test_loading_shipped_weights_imports_no_protobuf():
    script = ("import sys, jaxmir; jaxmir.load('msd-musicnn'); "
              "bad = sorted(m for m in sys.modules if m.startswith(('google.protobuf', "
              "'jaxmir.tfgraph', 'tensorflow'))); print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _public_callables():
    """(name, function) of every function and public method that a module's ``__all__`` names."""
    import importlib
    import inspect

    names = [name for name, tree in modules().items() if not name.endswith("__main__")
             and any(isinstance(node, ast.Assign) and "__all__" in ast.unparse(node.targets[0])
                     for node in tree.body)]
    for name in names:
        module = importlib.import_module(name)
        for export in module.__all__:
            value = getattr(module, export)
            if not getattr(value, "__module__", "").startswith("jaxmir"):
                continue
            if inspect.isfunction(value):
                yield f"{name}.{export}", value
            elif inspect.isclass(value):
                for attribute, member in vars(value).items():
                    member = getattr(member, "__func__", member)  # static and class methods
                    if inspect.isfunction(member) and (not attribute.startswith("_")
                                                       or attribute in ("__init__", "__call__")):
                        yield f"{name}.{export}.{attribute}", member


def test_public_functions_say_what_they_take_and_give():
    """Type hints on public functions (``stream.file_stream``'s ``output`` and ``**options``,
    ``run_tag``'s model, ``pipeline.run_plan``'s audio had none), and packages whose names load
    at first use import them for type checkers (``jaxmir.train``'s were all ``object``; without
    ``py.typed`` none of the hints reached a user's checker)."""
    import inspect

    require("ray")  # jaxmir.collection.ray_engine's __all__ is checked too
    missing = []
    for name, function in _public_callables():
        signature = inspect.signature(function)
        missing += [f"{name}({p.name})" for p in signature.parameters.values()
                    if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
        if signature.return_annotation is inspect.Signature.empty and name[-8:] != "__init__":
            missing.append(f"{name} -> ?")
    assert not missing, missing
    for name, tree in modules().items():
        lazy = [node for node in tree.body if isinstance(node, ast.Assign)
                and "__getattr__" in ast.unparse(node.targets[0])]
        if lazy and name != "jaxmir.lazy":
            top = [*tree.body, *(child for node in tree.body if isinstance(node, ast.If)
                                 and "TYPE_CHECKING" in ast.unparse(node.test)
                                 for child in node.body)]
            hinted = {alias.asname or alias.name for node in top
                      if isinstance(node, ast.ImportFrom) for alias in node.names}
            exported = next(ast.literal_eval(node.value) for node in tree.body
                            if isinstance(node, ast.Assign) and ast.unparse(node.targets[0])
                            == "__all__")
            assert set(exported) <= hinted, (name, set(exported) - hinted)
            sources = [ast.literal_eval(node.value) for node in tree.body if isinstance(
                node, ast.Assign) and ast.unparse(node.targets[0]) == "_EXPORTS"]
            assert all(set(source) == set(exported) for source in sources), name
    assert (PACKAGE / "py.typed").is_file()
    from typing import get_overloads

    from jaxmir.model import Model

    # predict's one name gives an array, a list of names a dict (it said ArrayLike | dict: the
    # README's `tags.mean(0)` failed a checker); traced audio gives JAX arrays
    overloads = [inspect.signature(f) for f in get_overloads(Model.predict)]
    assert [(s.parameters["output"].annotation, s.return_annotation) for s in overloads] == [
        ("str | None", "np.ndarray | jax.Array"),
        ("list[str] | tuple[str, ...]", "dict[str, np.ndarray | jax.Array]"),
        # str | list[str] was typed as a list's: a dict, where a str gives an array
        ("str | Iterable[str] | None",
         "np.ndarray | jax.Array | dict[str, np.ndarray | jax.Array]")]
    assert inspect.signature(Model.features).return_annotation == "np.ndarray | jax.Array"
    assert [inspect.signature(f).return_annotation for f in get_overloads(Model.stream)] == [
        "streaming.Stream[np.ndarray]", "streaming.Stream[dict[str, np.ndarray]]",
        "streaming.Stream"]
