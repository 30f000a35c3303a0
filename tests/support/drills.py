"""monitoring/drills/run.py against a real stack: the service (two workers under `scene-packer
serve`) on PostgreSQL and Redis reached through TCP proxies, its DATA_DIR on a small disk, a real
Prometheus with monitoring/'s rules (`for:` and windows shortened to seconds) and a real
Alertmanager (monitoring/'s routing, group timings of a second) sending to the drill tool, under
a steady signed-in load. The plan is monitoring/drills/staging.toml's drills, each fault caused
here the test's way (the proxies cut or hung, the lock, slow clients, killed workers, the disk
filled, Alertmanager stopped)."""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from service.auth.sessions import SESSION_COOKIE_NAME
from tests.support import ROOT
from tests.support.backends import REDIS_URL
from tests.support.client import PASSWORD
from tests.support.faults import small_disk
from tests.support.server import PRODUCTION_ENV, free_port, running_server
from tests.support.stack import (
    ThreadedProxy,
    alertmanager,
    prometheus,
    prometheus_config,
    query,
)
from tests.support.tools import require
from tests.support.waiting import wait_until

DRILLS = ROOT / "monitoring" / "drills"
# The plan's drills in two halves, each a test file of its own so that they run side by side.
DEPENDENCY_DRILLS = [
    "database cut", "database hung", "cache cut", "cache hung", "table locked", "slow clients"
]  # fmt: skip
PROCESS_DRILLS = ["workers killed", "disk filling", "alertmanager stopped"]
# Shortened as the rules are (tests/support/stack.py: `for:` a tenth, in seconds, of its
# minutes; windows 10 s): a page within a minute and a half, and 12 s of quiet after the
# resolution (the symptoms' windows, 10 s here).
TIMING = {"page_within": 90, "resolve_within": 90, "quiet_after": 12, "settle_within": 120}


class Controls:
    """The proxies, switched by the plan's commands: POST /<database|cache>/<cut|hang|restore>."""

    def __init__(self, proxies: dict[str, ThreadedProxy]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                name, action = self.path.strip("/").split("/")
                getattr(proxies[name], action)()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def command(self, name: str, action: str) -> str:
        return f"curl -fsS -X POST {self.url}/{name}/{action}"


@contextmanager
def _load(base_url: str) -> Iterator[None]:
    """A signed-in user reading, and a request that reads the sessions table every time (a
    logout-all whose session is gone): what the faults act on."""
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            account = {"username": f"load-{uuid.uuid4().hex[:8]}", "password": PASSWORD}
            # A busy machine's first requests may meet a timeout: asked again until answered.
            _until_answered(lambda: client.post("/api/auth/register", json=account), 201)
            login = _until_answered(lambda: client.post("/api/auth/login", json=account), 200)
            ended = f"{SESSION_COOKIE_NAME}={login.cookies[SESSION_COOKIE_NAME]}"
            _until_answered(
                lambda: client.post("/api/auth/logout-all", headers={"Cookie": ended}), 200
            )
            client.cookies.clear()
            _until_answered(lambda: client.post("/api/auth/login", json=account), 200)
            started.release()
            for _ in itertools.count():
                if stop.is_set():
                    return
                for request in (
                    lambda: client.get("/api/auth/me"),
                    lambda: httpx.post(
                        base_url + "/api/auth/logout-all", headers={"Cookie": ended}, timeout=30
                    ),
                    lambda: client.get("/"),
                ):
                    with suppress(httpx.TransportError):
                        request()
                stop.wait(0.1)

    started = threading.Semaphore(0)
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert started.acquire(timeout=120), "the load never signed in"
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def _until_answered(request: Callable[[], httpx.Response], status: int) -> httpx.Response:
    for _ in range(30):
        with suppress(httpx.TransportError):
            answer = request()
            if answer.status_code == status:
                return answer
        time.sleep(1)
    raise AssertionError(f"never answered {status}")


def _plan(
    controls: Controls, supervisor: int, data_dir: Path, alertmanager_url: str, config: Path
) -> dict[str, Any]:
    """staging.toml's drills, each fault caused the test's way."""
    shipped = tomllib.loads((DRILLS / "staging.toml").read_text())
    ours = {
        "database cut": {"start": controls.command("database", "cut")},
        "database hung": {"start": controls.command("database", "hang")},
        "cache cut": {"start": controls.command("cache", "cut")},
        "cache hung": {"start": controls.command("cache", "hang")},
        "table locked": {  # the shipped lock, by URL (this machine's PostgreSQL trusts TCP)
            "during": "(echo 'BEGIN; LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE;'; "
            'sleep 86400) | psql -q -v ON_ERROR_STOP=1 "$DRILL_DATABASE"'
        },
        # Past HighLatencyP95's `for:` (30 s here): a page it would have sent, it would have.
        "slow clients": {"during": shipped_during(shipped, "slow clients"), "hold": 40},
        "workers killed": {
            "during": f"while :; do pkill -KILL -n -P {supervisor}; sleep 2; done",
        },
        "disk filling": {},  # the shipped commands, on DATA_DIR's small disk
        "alertmanager stopped": {  # [-]: the pattern does not match the shell running it
            "start": f"pkill -STOP -f {shlex.quote('[-]-config.file=' + str(config))}",
            "stop": f"pkill -CONT -f {shlex.quote('[-]-config.file=' + str(config))}",
            "hold": 40,  # past its `for:` (30 s here) and a scrape
        },
    }
    drills = []
    for drill in shipped["drill"]:
        caused = ours[drill["name"]]
        restore = "restore" if drill["name"].startswith(("database", "cache")) else None
        kept = {k: v for k, v in drill.items() if k not in ("start", "stop", "during")}
        if not caused:
            caused = {k: drill[k] for k in ("start", "stop") if k in drill}
        if restore is not None:
            caused["stop"] = controls.command(drill["name"].split()[0], restore)
        drills.append({**kept, **caused})
    return {
        "stack": {
            "alertmanager": alertmanager_url,
            "paging_receivers": ["pager"],
            **TIMING,
            "environment": {
                **shipped["stack"]["environment"],
                "DRILL_DATA_DIR": str(data_dir),
            },
        },
        "drill": drills,
    }


def shipped_names() -> list[str]:
    return [d["name"] for d in tomllib.loads((DRILLS / "staging.toml").read_text())["drill"]]


def shipped_during(plan: dict[str, Any], name: str) -> str:
    (drill,) = [d for d in plan["drill"] if d["name"] == name]
    return str(drill["during"])


def _toml(plan: dict[str, Any]) -> str:
    lines = ["[stack]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in plan["stack"].items() if k != "environment"]
    lines.append("[stack.environment]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in plan["stack"]["environment"].items()]
    for drill in plan["drill"]:
        lines.append("[[drill]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in drill.items()]
    return "\n".join(lines) + "\n"


def run_drills(tmp_path: Path, postgres_url: str, names: list[str]) -> list[dict[str, Any]]:
    """Run these drills of the shipped plan on a stack of their own; every verdict must pass.
    The results, one per drill."""
    require("curl")
    require("psql")
    database = make_url(postgres_url)
    redis = make_url(REDIS_URL)
    with ExitStack() as stack:
        proxies = {
            "database": ThreadedProxy(database.port or 5432),
            "cache": ThreadedProxy(redis.port or 6379),
        }
        for proxy in proxies.values():
            proxy.start()
            stack.callback(proxy.close)
        controls = Controls(proxies)
        stack.callback(
            controls.server.server_close
        )  # after the shutdown below (last in, first out)
        stack.callback(controls.server.shutdown)
        data_dir = stack.enter_context(small_disk(tmp_path / "data", "64m"))
        env = {
            **PRODUCTION_ENV,
            "DATABASE_URL": database.set(port=proxies["database"].port).render_as_string(
                hide_password=False
            ),
            "REDIS_URL": redis.set(port=proxies["cache"].port).render_as_string(
                hide_password=False
            ),
            "CACHE_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
            "DATA_DIR": str(data_dir),
            "HEALTH_REFRESH_SECONDS": "1",
            "REQUEST_TIMEOUT": "2",
            "REDIS_SOCKET_TIMEOUT": "0.5",
            "METRICS_SYNC_INTERVAL": "0.5",
            "LOGIN_LIMIT_PER_IP": "100000",
            "SESSION_COOKIE_SECURE": "false",
            "LOG_LEVEL": "WARNING",
        }
        server = stack.enter_context(
            running_server(tmp_path, env, config={"workers": 2}, supervised=True)
        )
        listen = f"127.0.0.1:{free_port()}"
        manager = stack.enter_context(alertmanager(tmp_path, f"http://{listen}"))
        config = prometheus_config(
            tmp_path, server.base_url.removeprefix("http://"), manager.removeprefix("http://"),
            shorten=True, for_scale=0.1,
        )  # fmt: skip
        prometheus_url = stack.enter_context(prometheus(tmp_path, config))
        plan = _plan(controls, server.process.pid, data_dir, manager, tmp_path / "alertmanager.yml")
        plan["stack"]["prometheus"] = prometheus_url
        # With `for:` shortened to 1 s, Prometheus' first evaluation, before its first scrape of
        # Alertmanager, may fire AlertmanagerDown (absent), which then keeps firing 10 s: past
        # that, the drill tool sees whatever still fires and waits for it.
        wait_until(
            lambda: query(prometheus_url, 'count_over_time(up{job="alertmanager"}[15s]) >= 12'),
            60,
            "Prometheus never scraped Alertmanager for 12 s",
        )
        plan["stack"]["environment"] |= {
            "DRILL_SERVICE": server.base_url,
            "DRILL_DATABASE": database.set(drivername="postgresql").render_as_string(
                hide_password=False
            ),
        }
        plan_file = tmp_path / "plan.toml"
        plan_file.write_text(_toml(plan))
        results_file = tmp_path / "drills.json"
        with _load(server.base_url):
            drills = subprocess.run(
                [sys.executable, str(DRILLS / "run.py"), "--plan", str(plan_file),
                 "--listen", listen, "--json", str(results_file),
                 *(f"--only={name}" for name in names)],
                capture_output=True, text=True, timeout=900,
            )  # fmt: skip
    print(drills.stdout)
    assert results_file.exists(), drills.stdout + drills.stderr
    results: list[dict[str, Any]] = json.loads(results_file.read_text())
    assert [r["drill"] for r in results] == names
    failed = [r for r in results if not r["passed"]]
    assert not failed, drills.stdout + drills.stderr
    assert drills.returncode == 0
    return results
