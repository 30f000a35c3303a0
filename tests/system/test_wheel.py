"""The package as an adopter gets it: the wheel `python -m build` makes, installed into a new
virtual environment outside the repository, run from an empty directory (no hypercorn.toml, no
alembic/ beside it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.version import VERSION
from tests.support import ROOT
from tests.support.backends import REDIS_URL
from tests.support.server import PRODUCTION_ENV, free_port, stop
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The `bin/` of a new venv holding only the wheel and its dependencies."""
    base = tmp_path_factory.mktemp("wheel")
    # What the Dockerfile copies, built apart: a build writes beside its sources.
    source = base / "source"
    for name in ("service", "alembic"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "hypercorn.toml"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(base / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (base / "dist").glob("*.whl")  # built from the sdist, as PyPI's users get it
    venv.create(base / "venv", with_pip=True)
    bin_dir = base / "venv" / "bin"
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel],
        check=True,
        capture_output=True,
        timeout=900,
    )
    yield bin_dir


def _run(
    bin_dir: Path, cwd: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_dir / "scene-packer", *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _serve_and_ask_ready(bin_dir: Path, cwd: Path, env: dict[str, str]) -> list[dict[str, object]]:
    """`scene-packer serve --bind`, /api/health/ready answered 200, SIGTERM, exit 0: the lines."""
    port = free_port()
    output = cwd / "serve.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [bin_dir / "scene-packer", "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=cwd,
            env={"PATH": os.environ["PATH"], **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert process.poll() is None, output.read_text()
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/health/ready", timeout=5)
            except httpx.TransportError:
                return False
            return answer.status_code == 200

        wait_until(ready, 120, "the installed service never answered ready")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, output.read_text()
    finally:
        stop(process)
    return [json.loads(line) for line in output.read_text().splitlines() if line.startswith("{")]


def test_the_wheel_is_the_service_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [installed / "python", "-c", "import service; print(service.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where).is_relative_to(installed.parent), where
    version = _run(installed, tmp_path, "--version", env={})
    assert version.stdout.strip() == f"scene-packer {VERSION}"


def test_migrate_check_serve_on_postgresql(
    installed: Path, empty_database: str, tmp_path: Path
) -> None:
    env = {**PRODUCTION_ENV, "DATABASE_URL": empty_database, "REDIS_URL": REDIS_URL}
    migrated = _run(installed, tmp_path, "migrate", env=env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert '"event":"database_migrated"' in migrated.stdout.replace(" ", "")
    checked = _run(installed, tmp_path, "check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "database: healthy [critical]" in checked.stdout.splitlines()

    events = _serve_and_ask_ready(installed, tmp_path, env)
    (started,) = [e for e in events if e["event"] == "server_started"]
    # No hypercorn.toml here: the package's own, under the venv.
    assert Path(str(started["config"])).is_relative_to(installed.parent)
    assert not (tmp_path / "var" / "scene_packer.db").exists()  # PostgreSQL, not SQLite


def test_serve_on_the_embedded_default(installed: Path, tmp_path: Path) -> None:
    """Nothing configured: SQLite under ./var, the in-process cache, development logs."""
    checked = _run(installed, tmp_path, "check", env={})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    _serve_and_ask_ready(installed, tmp_path, {})
    assert (tmp_path / "var" / "scene_packer.db").is_file()
