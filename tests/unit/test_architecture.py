"""The shape of the code, as policy: the folders of service/ are layers and imports point down
them, packages form no cycle, parts are handed in by the composition root (never looked up), one
list builds the ASGI stack, and CONTRIBUTING.md's picture of the import graph is current."""

from __future__ import annotations

import ast
import importlib

from tests.support import ROOT
from tests.support.architecture import (
    GRAPH_END,
    GRAPH_START,
    LAYERS,
    import_graph,
    imports,
    layer,
    modules,
    package_edges,
)


def test_every_import_points_down() -> None:
    upward = [
        f"{module} ({LAYERS[layer(module)][0]}) imports {imported} ({LAYERS[layer(imported)][0]})"
        for module, tree in modules().items()
        for imported in sorted(imports(tree))
        if layer(imported) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_cycle_between_packages() -> None:
    edges = package_edges()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for following in edges.get(start, ()):
            if following == goal or (
                following not in seen and reaches(following, goal, seen | {following})
            ):
                return True
        return False

    cycles = sorted(unit_ for unit_ in edges if reaches(unit_, unit_, {unit_}))
    assert not cycles, f"packages in an import cycle: {cycles}"


def test_nothing_imports_the_fixtures() -> None:
    """`tests/conftest.py` is pytest's: benchmarks, the harness and the tests share
    tests/support/ instead."""
    tests = (ROOT / "tests").glob("*/test_*.py")
    for path in [
        *(ROOT / "bench").rglob("*.py"),
        *(ROOT / "tests" / "support").rglob("*.py"),
        *tests,
    ]:
        assert "tests.conftest" not in imports(ast.parse(path.read_text())), path


def test_every_benchmark_moduleimports() -> None:
    from bench.__main__ import BENCHMARKS

    for target in BENCHMARKS.values():
        importlib.import_module(target.partition(":")[0])


def test_parts_are_handed_in_not_looked_up() -> None:
    """One way to wire a part: the composition root (service/app.py) builds it and hands it to
    whoever needs it. Nothing in service/ stores or finds a part in `app.extensions`, reads an
    attribute of an app by name (`getattr(app, ...)`), or reaches for the app's parts (`.parts`,
    `current_app.parts`) outside the composition root."""
    found = []
    for module, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "extensions":
                found.append(f"{module}: {ast.unparse(node)}")
            if isinstance(node, ast.Attribute) and node.attr == "parts" and module != "service.app":
                found.append(f"{module}: {ast.unparse(node)}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and node.args
                and ast.unparse(node.args[0]) in ("app", "current_app", "self.app")
            ):
                found.append(f"{module}: {ast.unparse(node)}")
    assert not found, found


def test_one_list_builds_the_asgi_stack() -> None:
    """The layers around Quart are one ordered list (service/app.py, `_asgi_stack`), which the
    supervisor's workers serve as it is: `asgi_app` is assigned once, and nothing else wraps the
    app (hypercorn's `wrap_app` only adapts it)."""
    assignments = [
        f"{module}: {ast.unparse(node)}"
        for module, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Attribute) and t.attr == "asgi_app" for t in node.targets)
    ]
    assert assignments == ["service.app: app.asgi_app = _asgi_stack(app.asgi_app, parts)"], (
        assignments
    )


def test_contributing_shows_the_import_graph_as_it_is() -> None:
    """The picture of the import graph in CONTRIBUTING.md, a row of boxes per layer: run
    `scripts/import-graph` after an import between packages changes."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    shown = text.split(GRAPH_START, 1)[1].split(GRAPH_END, 1)[0].strip()
    assert shown == import_graph(), (
        "CONTRIBUTING.md's import graph is stale: run scripts/import-graph"
    )
