"""The shape of service/ as data: its layers (bottom to top), each module's imports, and the
picture of the import graph that CONTRIBUTING.md shows (`scripts/import-graph` rewrites it)."""

from __future__ import annotations

import ast
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
# The package's own __init__ (a docstring only) stands above everything.
ROOT_MODULE = "service"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULE_NAMES = {module_name(path) for path in SERVICE.rglob("*.py")}


def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(SERVICE.rglob("*.py"))
    }


def imports(tree: ast.Module) -> set[str]:
    """Every `service…` module a module imports, at any depth (function-level imports too);
    `from service.observability import exposition` imports `service.observability.exposition`."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULE_NAMES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("service"))
    return found


def layer(module: str) -> int:
    if module == ROOT_MODULE:
        return len(LAYERS)
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


GRAPH_START = "<!-- import-graph: scripts/import-graph writes this block -->"
GRAPH_END = "<!-- /import-graph -->"


def unit(module: str) -> str:
    """A package of service/ (service.auth, service.http, ...) or a top-level module."""
    return ".".join(module.split(".")[:2])


def package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, tree in modules().items():
        if module == ROOT_MODULE:
            continue
        for imported in imports(tree):
            if imported != ROOT_MODULE and unit(imported) != unit(module):
                edges.setdefault(unit(module), set()).add(unit(imported))
    return edges


def import_graph() -> str:
    """The package-level import graph as a Mermaid flowchart, one row of boxes per layer, bottom
    to top: every arrow points down a floor or along one."""
    units = sorted({unit(module) for module in modules()} - {ROOT_MODULE})
    lines = ["```mermaid", "flowchart BT"]
    for index, (name, _) in enumerate(LAYERS):
        members = [u for u in units if layer(u) == index]
        lines.append(f"  subgraph layer_{name} [{name}]")
        lines += [f"    {_node(u)}[{u.removeprefix('service.')}]" for u in members]
        lines.append("  end")
    for source, targets in sorted(package_edges().items()):
        lines += [f"  {_node(source)} --> {_node(target)}" for target in sorted(targets)]
    lines.append("```")
    return "\n".join(lines)


def _node(unit_name: str) -> str:
    return unit_name.removeprefix("service.")
