"""What `pip install` gets: the lock covers every dependency, at a version the project allows."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        wanted += extra
    pins = _locked()
    outside = []
    for text in wanted:
        requirement = Requirement(text)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None or pinned not in requirement.specifier:
            outside.append(f"{requirement} (locked: {pinned})")
    assert not outside, "run pip-compile as CONTRIBUTING.md says: " + ", ".join(outside)


def test_the_package_carries_the_migrations_and_a_server_file() -> None:
    """In a checkout these are links to the top-level files the wheel copies."""
    package = ROOT / "service"
    assert (package / "backends/db/migrations").resolve() == ROOT / "alembic"
    assert (package / "serving/hypercorn.toml").resolve() == ROOT / "hypercorn.toml"
    assert sorted(p.name for p in (package / "backends/db/migrations/versions").glob("0*.py"))
