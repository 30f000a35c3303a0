"""The shape of the code, as policy: layers import only downwards, packages form no cycle, and a
part reaches another's objects through that part's own accessor, never by a string key."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from tests.support import ROOT

SERVICE = ROOT / "service"
# Bottom to top: the folders of service/ are the layers. A module may import its own layer and the
# ones below, never one above; a package sits in one layer whole.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("service.settings", "service.version", "service.unavailable")),
    ("instruments", ("service.observability",)),
    ("backends", ("service.backends",)),
    ("edge", ("service.http",)),
    # The features, each with its routes: sign-in, health, and the routes of no domain (the
    # index, /metrics, browser beacons).
    ("features", ("service.auth", "service.health", "service.blueprints")),
    # The worker's lifecycle, the master around the workers, the command line.
    ("serving", ("service.serving",)),
    # The composition root, and what hypercorn serves.
    ("app", ("service.app", "service.asgi")),
]
# The package's own __init__ (it exports create_app) stands above everything.
_ROOT_MODULE = "service"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_MODULE_NAMES = {_module_name(path) for path in SERVICE.rglob("*.py")}


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(SERVICE.rglob("*.py"))
    }


def _imports(tree: ast.Module) -> set[str]:
    """Every `service…` module a module imports, at any depth (function-level imports too);
    `from service.observability import exposition` imports `service.observability.exposition`."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in _MODULE_NAMES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("service"))
    return found


def _layer(module: str) -> int:
    if module == _ROOT_MODULE:
        return len(LAYERS)
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def test_every_import_points_down() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {imported} ({LAYERS[_layer(imported)][0]})"
        for module, tree in _modules().items()
        for imported in sorted(_imports(tree))
        if _layer(imported) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_cycle_between_packages() -> None:
    def unit(module: str) -> str:
        # The packages of service/ (service.auth, service.http, ...) and its top-level modules.
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for module, tree in _modules().items():
        if module == "service":
            continue
        for imported in _imports(tree):
            if imported != "service" and unit(imported) != unit(module):
                edges.setdefault(unit(module), set()).add(unit(imported))

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
        assert "tests.conftest" not in _imports(ast.parse(path.read_text())), path


def test_every_benchmark_module_imports() -> None:
    from bench.__main__ import BENCHMARKS

    for target in BENCHMARKS.values():
        importlib.import_module(target.partition(":")[0])


def test_parts_are_handed_in_not_looked_up() -> None:
    """One way to wire a part: the composition root (service/app.py) builds it and hands it to
    whoever needs it. Nothing in service/ stores or finds a part in `app.extensions`, reads an
    attribute of an app by name (`getattr(app, ...)`), or reaches the app through
    `current_app` for one of its parts."""
    found = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "extensions":
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
        for module, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Attribute) and t.attr == "asgi_app" for t in node.targets)
    ]
    assert assignments == ["service.app: app.asgi_app = _asgi_stack(app.asgi_app, parts)"], (
        assignments
    )
