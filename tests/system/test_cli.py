"""`scene-packer check|migrate|serve` as an operator runs them: real processes, real PostgreSQL and
Redis, exit codes checked the way systemd or Kubernetes would read them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from service.version import VERSION
from tests.support import ROOT
from tests.support.backends import REDIS_URL
from tests.support.faults import HungServer
from tests.support.server import (
    PRODUCTION_ENV,
    SCENE_PACKER,
    embedded_backends,
    free_port,
    is_live,
    running_server,
    to_toml,
)
from tests.support.waiting import until, wait_until


def scene_packer(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SCENE_PACKER, *args],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _backends(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "DATA_DIR": str(tmp_path)}


def test_check_migrate_check_on_a_new_database(empty_database: str, tmp_path: Path) -> None:
    env = _backends(empty_database, tmp_path)
    before = scene_packer("check", env=env)
    assert before.returncode == 3
    lines = before.stdout.splitlines()
    assert lines[0] == "settings: ok"
    assert "database: unhealthy (schema_outdated) [critical]" in lines
    assert "cache: healthy [critical]" in lines

    migrated = scene_packer("migrate", env={**env, **PRODUCTION_ENV})
    assert migrated.returncode == 0, migrated.stderr
    events = [json.loads(line) for line in migrated.stdout.splitlines() if line.startswith("{")]
    (done,) = [e for e in events if e["event"] == "database_migrated"]
    assert done["from_revision"] is None and done["to_revision"]

    after = scene_packer("check", env=env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "database: healthy [critical]" in after.stdout.splitlines()


def test_check_names_a_cache_it_cannot_reach(empty_database: str, tmp_path: Path) -> None:
    env = {**_backends(empty_database, tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = scene_packer("check", env=env)
    assert result.returncode == 3
    assert "cache: unhealthy (connection_refused) [critical]" in result.stdout.splitlines()


def test_check_on_the_embedded_default(tmp_path: Path) -> None:
    result = scene_packer("check", env={"DATA_DIR": str(tmp_path / "fresh")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[:3] == [
        "settings: ok",
        "database: healthy [critical]",
        "cache: healthy [critical]",
    ]


@pytest.mark.parametrize("command", ["check", "serve", "migrate"])
def test_a_bad_setting_exits_2_naming_it(command: str, tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path), "ENVIRONMENT": "production", "DB_POOL_SIZE": "lots"}
    result = scene_packer(command, env=env)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("{")]
    event = json.loads(line)
    assert event["event"] == "configuration_invalid"
    assert [p["setting"] for p in event["problems"]] == ["DB_POOL_SIZE"]
    assert "Traceback" not in result.stderr
    if command == "check":
        assert result.stdout.startswith("settings: DB_POOL_SIZE: ")


@pytest.mark.parametrize("command", ["check", "serve", "migrate"])
@pytest.mark.parametrize(
    ("named", "unset"),
    [({}, "DATABASE_URL, REDIS_URL"), ({"DATABASE_URL": "sqlite+aiosqlite:///x.db"}, "REDIS_URL")],
)
def test_production_without_its_backends_named_exits_2(
    command: str, named: dict[str, str], unset: str, tmp_path: Path
) -> None:
    """The embedded defaults are for development: production names what it runs on."""
    env = {**PRODUCTION_ENV, **named, "DATA_DIR": str(tmp_path)}
    result = scene_packer(command, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("{")]
    (problem,) = json.loads(line)["problems"]
    assert problem["setting"] == unset
    assert "production needs" in problem["problem"]
    assert not (tmp_path / "scene_packer.db").exists()


def test_serve_refuses_an_unmigrated_database(empty_database: str, tmp_path: Path) -> None:
    config = tmp_path / "hypercorn.toml"
    config.write_text(to_toml({"bind": ["127.0.0.1:0"], "workers": 1}))
    env = {**_backends(empty_database, tmp_path), **PRODUCTION_ENV}
    result = scene_packer("serve", "--config", str(config), env=env)
    assert result.returncode == 3
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    (refusal,) = [e for e in events if e["event"] == "cannot_serve"]
    assert refusal["failing"] == {"database": "schema_outdated"}


def test_serve_with_an_unreadable_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "hypercorn.toml"
    config.write_text("workers = [unterminated")
    result = scene_packer("serve", "--config", str(config), env={"DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "configuration_invalid" in result.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_cannot_start_makes_serve_exit_3(tmp_path: Path, workers: int) -> None:
    """METRICS_DIR that is not a directory: the settings are valid, the worker fails to start."""
    (tmp_path / "not-a-dir").write_text("")
    env = {
        **PRODUCTION_ENV,
        **embedded_backends(tmp_path / "data"),
        "DATA_DIR": str(tmp_path / "data"),
        "METRICS_DIR": str(tmp_path / "not-a-dir" / "metrics"),
    }
    config = tmp_path / "hypercorn.toml"
    config.write_text(to_toml({"bind": ["127.0.0.1:0"], "workers": workers}))
    result = scene_packer("serve", "--config", str(config), env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "worker_failed_to_start" in names
    (stopped,) = [e for e in events if e["event"] == "server_stopped"]
    assert stopped["exit_code"] == 3


def test_plain_hypercorn_still_serves(tmp_path: Path) -> None:
    with running_server(tmp_path, {}) as server:
        index = httpx.get(server.base_url + "/", timeout=30)
        ready = httpx.get(server.base_url + "/api/health/ready", timeout=30)
    assert index.status_code == 200 and index.json()["component"] == "api"
    assert ready.status_code == 200


@pytest.mark.parametrize(
    ("server_config", "exit_code", "event"),
    [
        ({"bind": 5}, 2, "configuration_invalid"),
        ({"bind": ["not an address"]}, 2, "configuration_invalid"),
        ({"keep_alive_timeout": "x"}, 2, "configuration_invalid"),
        ({"workers": "two"}, 2, "configuration_invalid"),
        ({"graceful_timeout": 5}, 2, "configuration_invalid"),  # below REQUEST_TIMEOUT (5 s)
        ({"workers": 1.5}, 2, "configuration_invalid"),
        ({"workers": 0}, 2, "configuration_invalid"),
        ({"bind": [""]}, 2, "configuration_invalid"),  # not every address of the machine
        ({"bind": ["192.0.2.1:18001"]}, 3, "cannot_serve"),  # not an address of this machine
    ],
)
def test_a_bad_server_file_is_refused_before_anything_starts(
    tmp_path: Path, server_config: dict[str, object], exit_code: int, event: str
) -> None:
    config = tmp_path / "hypercorn.toml"
    config.write_text(to_toml({"bind": ["127.0.0.1:0"], **server_config}))
    env = {**PRODUCTION_ENV, **embedded_backends(tmp_path), "DATA_DIR": str(tmp_path)}
    result = scene_packer("serve", "--config", str(config), env=env)
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == [event]


def test_a_port_in_use_cannot_be_served(tmp_path: Path) -> None:
    with running_server(tmp_path, {}) as server:
        config = tmp_path / "taken.toml"
        config.write_text(to_toml({"bind": [server.base_url.removeprefix("http://")]}))
        result = scene_packer(
            "serve", "--config", str(config), env={"DATA_DIR": str(tmp_path / "other")}
        )
    assert result.returncode == 3
    assert "cannot_serve" in result.stdout and "Address already in use" in result.stdout


async def test_a_stop_during_the_start_up_checks_exits_0(tmp_path: Path) -> None:
    """The checks wait on a hung PostgreSQL; SIGTERM then ends the start cleanly."""
    hung = HungServer()
    await hung.start()
    config = tmp_path / "hypercorn.toml"
    config.write_text(to_toml({"bind": ["127.0.0.1:0"]}))
    env = {
        **PRODUCTION_ENV,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"postgresql://x@127.0.0.1:{hung.port}/x",
        "REDIS_URL": "memory://",
        "HEALTH_CHECK_TIMEOUT": "20",
    }
    try:
        process = await asyncio.create_subprocess_exec(
            *SCENE_PACKER, "serve", "--config", str(config),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        await until(lambda: hung.connections > 0, 60, "the check never reached the database")
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await hung.stop()
    assert process.returncode == 0, output.decode()
    events = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "server_stopped"


def test_version_and_a_bad_option() -> None:
    version = scene_packer("--version", env={})
    assert (version.returncode, version.stdout.strip()) == (0, f"scene-packer {VERSION}")
    refused = scene_packer("serve", "--workers", "0", env={})
    assert refused.returncode == 2
    assert "--workers: must be a whole number of 1 or more, not '0'" in refused.stderr


def test_help_names_every_setting_and_the_exit_codes() -> None:
    helped = scene_packer("--help", env={})
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    assert [name for name in Settings.model_fields if name.upper() not in text] == []
    assert "scene-packer settings" in text and "3 cannot serve" in text


def test_serve_listens_where_the_command_line_says(tmp_path: Path) -> None:
    """`--bind` and `--workers` win over the file, as hypercorn's own options do."""
    in_file, on_command_line = free_port(), free_port()
    config = tmp_path / "hypercorn.toml"
    config.write_text(to_toml({"bind": [f"127.0.0.1:{in_file}"], "workers": 3}))
    env = {
        **PRODUCTION_ENV,
        **embedded_backends(tmp_path / "data"),
        "DATA_DIR": str(tmp_path / "data"),
        "PATH": os.environ["PATH"],
    }
    command = [*SCENE_PACKER, "serve", "--config", str(config)]
    command += ["--bind", f"127.0.0.1:{on_command_line}", "--workers", "1"]
    output = tmp_path / "serve.log"
    with output.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: is_live(f"http://127.0.0.1:{on_command_line}"), 120, "never served there"
        )
        assert not is_live(f"http://127.0.0.1:{in_file}")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
    (started,) = [
        json.loads(line)
        for line in output.read_text().splitlines()
        if line.startswith("{") and '"server_started"' in line
    ]
    assert started["workers"] == 1
    assert started["bind"] == [f"127.0.0.1:{on_command_line}"]


def test_a_worker_that_dies_while_stopping_makes_serve_exit_1(tmp_path: Path) -> None:
    """Exit code 1: the stop did not end cleanly. The worker is killed while it drains."""
    env = {**PRODUCTION_ENV, "DRAIN_SECONDS": "60", "LOG_LEVEL": "INFO"}
    with running_server(tmp_path, env, supervised=True) as server:
        (worker,) = [e["pid"] for e in server.events() if e["event"] == "service_started"]
        server.process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: any(e["event"] == "service_draining" for e in server.events()),
            60,
            "the worker never started draining",
        )
        os.kill(worker, signal.SIGKILL)
        assert server.process.wait(60) == 1
    (stopped,) = [e for e in server.events() if e["event"] == "server_stopped"]
    assert stopped["exit_code"] == 1 and stopped["level"] == "error"


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--bind", "127.0.0.1:99999", "bind:"),
        ("--bind", "nonsense", "bind:"),
        ("--workers", "abc", "--workers: must be a whole number of 1 or more, not 'abc'"),
    ],
)
def test_a_bad_command_line_value_is_named_as_such(
    tmp_path: Path, option: str, value: str, problem: str
) -> None:
    env = {**PRODUCTION_ENV, **embedded_backends(tmp_path), "DATA_DIR": str(tmp_path)}
    result = scene_packer("serve", option, value, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    if option == "--bind":
        (event,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert event["event"] == "configuration_invalid" and event["option"] == "--bind"
        assert event["problem"].startswith(problem) and "file" not in event
    else:
        assert problem in result.stderr


def test_a_server_file_without_logging_keeps_every_line_json(tmp_path: Path) -> None:
    """An operator's own hypercorn.toml with only `bind` and `workers`: hypercorn's lines still go
    through the service's pipeline (JSON in production)."""
    config = {"workers": 1, "graceful_timeout": 10}
    env = {**PRODUCTION_ENV, "LOG_LEVEL": "INFO"}
    with running_server(tmp_path, env, supervised=True, config=config, bare_config=True) as server:
        assert is_live(server.base_url)
    lines = server.lines()
    assert lines and [line for line in lines if not line.startswith("{")] == []
    assert any(e["logger"].startswith("hypercorn") for e in server.events())


def test_settings_prints_every_variable_with_its_meaning() -> None:
    printed = scene_packer("settings", env={})
    assert printed.returncode == 0
    names = [line.split(" ")[0] for line in printed.stdout.splitlines() if not line[:1].isspace()]
    assert names == [name.upper() for name in Settings.model_fields]
