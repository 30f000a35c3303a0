"""Two instances (two workers each, under `scene-packer serve`) behind a real HAProxy running
deploy/haproxy/haproxy.cfg unchanged, on real PostgreSQL and Redis. Under steady load through
HAProxy: one instance's database is cut (a TCP proxy), HAProxy takes it out on its readiness
checks and clients see no 5xx after that; it comes back when the database does; active users
and rate limits are global across instances; a real Prometheus discovers both instances through
`file_sd_configs` and `DatabaseDown` names the right one; a SIGTERM to one instance under load
fails no client request."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from sqlalchemy.engine import make_url

from tests.support.backends import REDIS_URL
from tests.support.client import login, register
from tests.support.faults import TcpProxy
from tests.support.haproxy import MARK_BOUND, running_haproxy
from tests.support.metrics_helpers import parse, value
from tests.support.server import PRODUCTION_ENV, Server, running_server
from tests.support.stack import prometheus, prometheus_config, query
from tests.support.tools import require
from tests.support.waiting import until

DRAIN_SECONDS = 6  # above fall x inter, so HAProxy stops sending before the instance stops
CLIENTS = 8
LOGIN_LIMIT = 4
_NOBODY = {"username": "nobody-here", "password": "wrong-password-123"}


@dataclass
class Load:
    """Concurrent clients through HAProxy; each answer recorded with when it was asked."""

    url: str
    path: str
    answers: list[tuple[float, float, int]] = field(default_factory=list)  # start, end, status
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=20) as client:
            await asyncio.gather(*(self._client(client) for _ in range(CLIENTS)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = await client.get(self.path)
            except httpx.HTTPError as error:
                self.failures.append((started, repr(error)))
            else:
                self.answers.append((started, time.monotonic(), response.status_code))
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()

    def errors_started_after(self, moment: float) -> list[tuple[float, float, int]]:
        return [a for a in self.answers if a[0] >= moment and a[2] >= 500]


def _instance_env(database_url: str, prefix: str) -> dict[str, str]:
    return {
        **PRODUCTION_ENV,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "CACHE_KEY_PREFIX": prefix,
        "TRUSTED_PROXIES": "127.0.0.1/32",
        "DRAIN_SECONDS": str(DRAIN_SECONDS),
        "LOGIN_LIMIT_PER_IP": str(LOGIN_LIMIT),
        "LOGIN_LIMIT_PER_USERNAME": str(LOGIN_LIMIT * 10),
        "LOG_LEVEL": "WARNING",
        "SESSION_COOKIE_SECURE": "false",  # plain HTTP through HAProxy in this test
    }


def _discovering_prometheus_config(tmp: Path, addresses: list[str], balancer: str) -> Path:
    """monitoring/prometheus as shipped (rules' `for:` shortened), finding the instances in a
    file as the commented `file_sd_configs` example in prometheus.yml says, and scraping the
    load balancer's exporter as its commented `scene-packer-lb` job does."""
    config_path = prometheus_config(tmp, addresses[0], None, shorten=True)
    config = yaml.safe_load(config_path.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "scene-packer"]
    labels = job.pop("static_configs")[0]["labels"]
    targets = tmp / "targets" / "scene-packer-test.yml"
    targets.parent.mkdir()
    targets.write_text(yaml.safe_dump([{"targets": addresses, "labels": labels}]))
    job["file_sd_configs"] = [{"files": [str(tmp / "targets" / "scene-packer-*.yml")]}]
    config["scrape_configs"].append(
        {
            "job_name": "scene-packer-lb",
            "scrape_interval": "1s",
            "static_configs": [{"targets": [balancer], "labels": {"slo_job": "scene-packer"}}],
        }
    )
    config_path.write_text(yaml.safe_dump(config))
    return config_path


async def _until(condition: Callable[[], bool]) -> None:
    await until(condition, MARK_BOUND, "condition never held")


def _address(server: Server) -> str:
    return server.base_url.removeprefix("http://")


async def test_two_instances_behind_haproxy_on_a_bad_day(tmp_path: Path, postgres_url: str) -> None:
    require("haproxy")
    database = make_url(postgres_url)
    cut_database = TcpProxy(database.port or 5432)
    await cut_database.start()
    via_proxy = database.set(host="127.0.0.1", port=cut_database.port)
    prefix = f"test-{os.urandom(4).hex()}:"
    figures: dict[str, float] = {}
    stack = ExitStack()
    try:
        instances = {}
        for name, url in (("a", via_proxy), ("b", database)):
            (tmp_path / name).mkdir()
            env = _instance_env(url.render_as_string(hide_password=False), prefix)
            context = running_server(tmp_path / name, env, config={"workers": 2}, supervised=True)
            # Entered in a thread: the database proxy runs on this event loop meanwhile.
            instances[name] = await asyncio.to_thread(stack.enter_context, context)
        haproxy = stack.enter_context(
            running_haproxy(tmp_path, {name: _address(s) for name, s in instances.items()})
        )
        addresses = [_address(instance) for instance in instances.values()]
        config = _discovering_prometheus_config(tmp_path, addresses, haproxy.metrics_address)
        prometheus_url = await asyncio.to_thread(stack.enter_context, prometheus(tmp_path, config))
        await haproxy.wait_for("a", "UP")
        await haproxy.wait_for("b", "UP")
        await _until(lambda: len(query(prometheus_url, 'up{service="scene-packer"} == 1')) == 2)

        # 1. One instance's database goes away under load.
        load = Load(haproxy.url, "/api/health")
        running = asyncio.create_task(load.run())
        await _until(lambda: len(load.answers) >= 100)  # the load is flowing
        cut_at = time.monotonic()
        await cut_database.cut()
        down_at = await haproxy.wait_for("a", "DOWN")
        figures["seconds_to_mark_down"] = down_at - cut_at
        await _until(lambda: len([a for a in load.answers if a[0] > down_at]) >= 200)
        # Prometheus pages for the right instance, and only that one.
        firing = 'ALERTS{alertname="DatabaseDown", alertstate="firing"}'
        await _until(lambda: bool(query(prometheus_url, firing)))
        assert [a["metric"]["instance"] for a in query(prometheus_url, firing)] == [addresses[0]]
        after_down = load.errors_started_after(down_at + 0.05)
        figures["5xx_after_mark_down"] = len(after_down)
        figures["5xx_before_mark_down"] = len(
            [a for a in load.answers if cut_at <= a[0] < down_at and a[2] >= 500]
        )

        # 2. It comes back when the database does.
        await cut_database.start()
        restored_at = time.monotonic()
        up_at = await haproxy.wait_for("a", "UP")
        figures["seconds_to_recover"] = up_at - restored_at
        load.stop()
        await running
        assert not load.failures, load.failures[:3]
        assert after_down == [], after_down[:5]
        # The availability SLO counts what clients got, from HAProxy's exporter.
        lb_view = 'job:slo_failures_per_request:ratio_rate5m{job="scene-packer"}'
        await _until(lambda: bool(query(prometheus_url, lb_view)))
        assert query(prometheus_url, "job:slo_lb_errors_per_request:ratio_rate5m")

        # 3. Active users and rate limits are global. A user signed in through HAProxy is counted
        # once, by both instances, whichever answered; the per-address login limit counts the
        # attempts both instances saw (X-Forwarded-For, which HAProxy extends, names the client).
        async with httpx.AsyncClient(base_url=haproxy.url, timeout=20) as client:
            assert (await register(client)).status_code == 201
            assert (await login(client)).status_code == 200
            for _ in range(6):
                assert (await client.get("/api/auth/me")).status_code == 200
            for instance in instances.values():
                scraped = (await client.get(instance.base_url + "/metrics")).text
                assert value(parse(scraped), "active_users") == 1
            elsewhere = {"X-Forwarded-For": "203.0.113.7"}
            statuses = [
                (await client.post("/api/auth/login", json=_NOBODY, headers=elsewhere)).status_code
                for _ in range(LOGIN_LIMIT + 1)
            ]
        assert statuses == [401] * LOGIN_LIMIT + [429]

        # 4. SIGTERM to one instance under load: no client request fails.
        load = Load(haproxy.url, "/")
        running = asyncio.create_task(load.run())
        await _until(lambda: len(load.answers) >= 100)
        instances["b"].process.send_signal(signal.SIGTERM)
        await haproxy.wait_for("b", "DOWN")
        await asyncio.to_thread(instances["b"].process.wait, 60)
        stopped_at = time.monotonic()
        await _until(lambda: len([a for a in load.answers if a[0] > stopped_at]) >= 100)
        load.stop()
        await running
        figures["requests_during_the_stop"] = len(load.answers)
        assert instances["b"].process.returncode == 0
        assert not load.failures, load.failures[:3]
        assert [a for a in load.answers if a[2] != 200] == []
    finally:
        # In a thread: instance a's shutdown goes through the database proxy on this loop.
        await asyncio.to_thread(stack.close)
        await cut_database.cut()
    print("several instances:", figures)
