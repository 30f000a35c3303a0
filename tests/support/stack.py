"""Real Prometheus, Alertmanager and a webhook receiver, for tests of monitoring/."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import ROOT
from tests.support.faults import TcpProxy
from tests.support.server import free_port, stop
from tests.support.tools import require
from tests.support.waiting import wait_until

MONITORING = ROOT / "monitoring"


@contextmanager
def process(command: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: _ok(ready_url), 60, f"{command[0]} did not become ready:\n{log}")
        yield proc
    finally:
        stop(proc)


def prometheus_config(
    tmp_path: Path,
    target: str,
    alertmanager: str | None,
    *,
    shorten: bool,
    for_scale: float | None = None,
    blackbox: tuple[str, str] | None = None,
    remote_write: str | None = None,
) -> Path:
    """monitoring/prometheus as shipped, scraping `target` every second. `shorten` rewrites the
    rules' `for:` and range windows to seconds, so alerts fire and resolve within a test.
    `blackbox` (the exporter's address, the base URL to probe) keeps the `blackbox` job;
    `remote_write` adds that URL, as `monitoring/run --remote-write` does. `for_scale` (with
    `shorten`) scales each `for:` instead of setting it to 1 s, so that alerts fire in the order
    they do in production (DatabaseDown's minute before DatabaseSlow's two)."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    for rule_file in (MONITORING / "prometheus" / "rules").glob("*.yml"):
        text = rule_file.read_text()
        if shorten:
            text = re.sub(r"(?<!_)for: (\d+)([smhd])", partial(_for, for_scale), text)
            text = re.sub(r"keep_firing_for: \d+[smhd]", "keep_firing_for: 10s", text)
            text = re.sub(r"\[\d+[smhd]\]", "[10s]", text)
        (rules_dir / rule_file.name).write_text(text)
    config = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(path) for path in sorted(rules_dir.glob("*.yml"))]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    service = jobs["scene-packer"]
    service.update({"scrape_interval": "1s", "scrape_timeout": "1s"})
    service["static_configs"] = [{**service["static_configs"][0], "targets": [target]}]
    # Prometheus' own port is chosen after this file is written: it is not scraped here.
    kept = [service]
    if alertmanager is None:
        config.pop("alerting", None)
    else:
        config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
        jobs["alertmanager"]["static_configs"] = [{"targets": [alertmanager]}]
        kept.append(jobs["alertmanager"])
    if blackbox is not None:
        exporter, base = blackbox
        probes = jobs["blackbox"]
        probes["scrape_interval"] = "1s"
        for group in probes["static_configs"]:
            group["targets"] = [
                base + t.removeprefix("http://127.0.0.1:8000") for t in group["targets"]
            ]
        (address,) = [
            r for r in probes["relabel_configs"] if r.get("target_label") == "__address__"
        ]
        address["replacement"] = exporter
        kept.append(probes)
    if remote_write is not None:
        config["remote_write"] = [{"url": remote_write}]
    config["scrape_configs"] = kept
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _for(scale: float | None, match: re.Match[str]) -> str:
    if scale is None:
        return "for: 1s"
    seconds = int(match.group(1)) * _SECONDS[match.group(2)] * scale
    return f"for: {max(1, round(seconds))}s"


@contextmanager
def prometheus(tmp_path: Path, config: Path) -> Iterator[str]:
    port = free_port()
    command = [
        require("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        # Alerts that fire before Alertmanager is discovered (up to 5 s) are otherwise only
        # re-sent after the default minute.
        "--rules.alert.resend-delay=2s",
        "--enable-feature=exemplar-storage",  # as monitoring/run starts it
    ]
    url = f"http://127.0.0.1:{port}"
    with process(command, url + "/-/ready", tmp_path / "prometheus.log"):
        yield url


@contextmanager
def victoria_metrics(tmp_path: Path) -> Iterator[str]:
    """A single-node VictoriaMetrics (Debian's `victoria-metrics`): the long-term store that
    Prometheus remote-writes to; its URL (`/api/v1/write` to write, the Prometheus query API)."""
    port = free_port()
    command = [
        require("victoria-metrics"),
        f"-storageDataPath={tmp_path / 'victoria-metrics'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        # Samples visible as soon as written (30 s later by default), no cached answers: a test
        # asks about the last seconds.
        "-search.latencyOffset=0s",
        "-search.disableCache",
    ]
    url = f"http://127.0.0.1:{port}"
    with process(command, url + "/health", tmp_path / "victoria-metrics.log"):
        yield url


@contextmanager
def alertmanager(tmp_path: Path, webhook: str) -> Iterator[str]:
    """monitoring/alertmanager as shipped, with every receiver sent to `webhook` and
    group timings of a second."""
    config = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
    config["route"].update({"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"})
    for route in config["route"]["routes"]:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook}/{receiver['name']}"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        require("alertmanager"),
        f"--config.file={path}",
        f"--storage.path={tmp_path / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    url = f"http://127.0.0.1:{port}"
    with process(command, url + "/-/ready", tmp_path / "alertmanager.log"):
        yield url


class Webhook:
    """Collects Alertmanager's notifications: (receiver, status, alertname, severity) tuples."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                payload = json.loads(body)
                if isinstance(payload, dict):
                    payload["receiver_path"] = self.path.strip("/")
                    received.append(payload)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self) -> list[tuple[str, str, str, str]]:
        return [
            (n["receiver_path"], alert["status"], alert["labels"]["alertname"],
             alert["labels"].get("severity", ""))
            for n in list(self.notifications)
            for alert in n["alerts"]
        ]  # fmt: skip


class ThreadedProxy:
    """A TcpProxy on its own event loop thread, for servers in other processes."""

    def __init__(self, target_port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = TcpProxy(target_port)
        self.port = self.proxy.port

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.cut(), self.loop).result(10)

    def hang(self) -> None:
        async def hang() -> None:
            self.proxy.hang()

        asyncio.run_coroutine_threadsafe(hang(), self.loop).result(10)

    def restore(self) -> None:
        """Open again after a cut or a hang: the hung connections are reset, new ones pass."""
        self.cut()
        self.proxy.hung = False
        self.start()

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(prometheus_url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
