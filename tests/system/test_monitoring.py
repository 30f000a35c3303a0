"""monitoring/ against real Prometheus, Alertmanager and the running service."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from tests.support import ROOT
from tests.support import dashboard_pictures as pictures
from tests.support.backends import REDIS_URL
from tests.support.grafana import (
    DASHBOARD,
    dashboard_variables,
    log_search,
    panels,
)
from tests.support.haproxy import running_haproxy
from tests.support.server import PRODUCTION_ENV, Server, free_port, running_server
from tests.support.stack import (
    MONITORING,
    ThreadedProxy,
    Webhook,
    alertmanager,
    process,
    prometheus,
    prometheus_config,
    query,
    victoria_metrics,
)
from tests.support.tools import require
from tests.support.waiting import wait_until

PROMETHEUS_DIR = MONITORING / "prometheus"
PICTURE_MINUTES = 4  # of traffic behind docs/dashboards.md's pictures
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
RECORDING_RULES = PROMETHEUS_DIR / "rules" / "recording.yml"
# A variable in a Grafana data link: `${name}` or `${name:format}`.


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_config_and_rules() -> None:
    promtool = require("promtool")
    config = _run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _run(promtool, "check", "rules", *map(str, (PROMETHEUS_DIR / "rules").glob("*.yml")))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = _run(
        require("promtool"), "test", "rules", str(PROMETHEUS_DIR / "tests" / "alerts_test.yml")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_accepts_the_config_and_routes_each_severity() -> None:
    amtool = require("amtool")
    check = _run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert check.returncode == 0, check.stdout + check.stderr
    for labels, receiver in (
        (["alertname=HighErrorRate", "severity=critical", "job=scene-packer"], "pager"),
        (["alertname=HighLatencyP95", "severity=warning", "job=scene-packer"], "tickets"),
        (["alertname=Watchdog", "severity=none"], "watchdog"),
        # A failing pager or second channel: told on both, one of them works.
        (
            ["alertname=NotificationsFailing", "severity=critical", "job=alertmanager"],
            "fallback,pager",
        ),
    ):
        routed = _run(
            amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
            f"--verify.receivers={receiver}", *labels,
        )  # fmt: skip
        assert routed.returncode == 0, (labels, routed.stdout + routed.stderr)


def _assert_log_search_finds(value: str) -> None:
    """The exemplar's link, with the dashboard's values and with each of docs/dashboards.md's
    examples, searches for exactly that id: as a query parameter of a plain search, or as the
    line filter of a Loki query in Grafana's Explore."""
    for variables in (dashboard_variables(), *_documented_log_searches()):
        link = urlsplit(log_search(value, variables))
        parameters = parse_qs(link.query)
        if link.path == "/explore":
            (pane,) = json.loads(parameters["panes"][0]).values()
            (loki,) = pane["queries"]
            assert loki["datasource"]["uid"] == pane["datasource"]
            assert loki["expr"].endswith(f' |= "{value}"'), loki["expr"]
        else:
            assert parameters == {"q": [value]}, link


def _documented_log_searches() -> list[dict[str, str]]:
    """The log_search_prefix/suffix examples of docs/dashboards.md, Log search links."""
    section = (ROOT / "docs" / "dashboards.md").read_text().split("## Log search links", 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    examples: list[dict[str, str]] = []
    for line in block.splitlines():
        match = re.search(r"(log_search_prefix|log_search_suffix)(?:  (.*))?$", line)
        assert match, line
        if match.group(1) == "log_search_prefix":
            examples.append({})
        examples[-1][match.group(1)] = match.group(2) or ""
    return examples


def _service_env(postgres_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": REDIS_URL,
        "CACHE_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
        "HEALTH_REFRESH_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@contextmanager
def _background_traffic(
    server: Server,
    paths: list[str],
    pause: float,
    beacon: dict[str, Any] | None = None,
    *,
    signed_in: bool = False,
) -> Iterator[None]:
    """`paths` fetched (and `beacon` sent) every `pause` seconds until the block ends;
    `signed_in`: as a user of its own, who also registers a new account every tenth turn (the
    database and the cache at work, as under real use)."""
    stop = threading.Event()
    password = "long enough password"

    def loop() -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            if signed_in:
                account = {"username": f"reader-{uuid.uuid4().hex[:8]}", "password": password}
                client.post("/api/auth/register", json=account)
                client.post("/api/auth/login", json=account)
            for turn in itertools.count():
                if stop.is_set():
                    break
                if signed_in and turn % 10 == 0:
                    name = f"new-{uuid.uuid4().hex[:8]}"
                    with suppress(httpx.TransportError):
                        client.post(
                            "/api/auth/register", json={"username": name, "password": password}
                        )
                for path in paths:
                    with suppress(httpx.TransportError):
                        client.get(path)
                if beacon is not None:
                    with suppress(httpx.TransportError):
                        client.post("/api/rum", json=beacon)
                        client.post("/api/rum", content=b"{broken")
                stop.wait(pause)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)


def test_every_dashboard_panel_returns_data(tmp_path: Path, postgres_url: str) -> None:
    """Every panel's every query returns a number, from Prometheus and, beyond it, from the
    long-term store it remote-writes to (VictoriaMetrics): the dashboard and the recording
    rules' series read the same there."""
    env = _service_env(postgres_url, LOGIN_LIMIT_PER_USERNAME="3", REGISTER_LIMIT_PER_IP="1000")
    with (
        running_server(tmp_path, env, app="tests.support.apps:app") as server,
        victoria_metrics(tmp_path) as long_term,
    ):
        target = server.base_url.removeprefix("http://")
        config = prometheus_config(
            tmp_path, target, None, shorten=False, remote_write=long_term + "/api/v1/write"
        )
        with prometheus(tmp_path, config) as prom, httpx.Client(base_url=server.base_url) as client:
            credentials = {"username": "dashboard", "password": "long enough password"}
            client.post("/api/auth/register", json=credentials)
            assert client.post("/api/auth/login", json=credentials).status_code == 200
            for _ in range(3):
                client.get("/api/auth/me")
            wrong = {"username": "dashboard", "password": "not the password"}
            statuses = [client.post("/api/auth/login", json=wrong).status_code for _ in range(4)]
            assert 429 in statuses
            assert client.get("/test/boom").status_code == 500
            beacon = {
                "page": "/rum/demo",
                "metrics": [
                    {"name": name, "value": value}
                    for name, value in (
                        ("FCP", 900),
                        ("LCP", 2100),
                        ("INP", 120),
                        ("TTFB", 300),
                        ("CLS", 0.02),
                    )
                ],
                "errors": [{"kind": "TypeError", "message": "x is undefined"}],
                "api": [
                    {"endpoint": "/api/auth/me", "method": "GET", "status": 503, "duration": 80}
                ],
            }
            assert client.post("/api/rum", json=beacon).status_code == 204
            assert client.post("/api/rum", content=b"{broken").status_code == 400
            dashboard = json.loads(DASHBOARD.read_text())
            started = time.monotonic()
            paths = ["/api/auth/me", "/", "/nope", "/test/boom"]
            with _background_traffic(server, paths, 0.2, beacon, signed_in=True):
                for panel in panels(dashboard):
                    for panel_target in panel["targets"]:
                        expr = pictures.grafana_query(panel_target["expr"], "scene-packer")
                        wait_until(
                            lambda e=expr: any(r["value"][1] != "NaN" for r in query(prom, e)),
                            90,
                            f"panel {panel['title']!r} returned no data for {expr}",
                        )
                # The same queries of the long-term store, and every recording rule's series
                # that Prometheus has by now.
                recorded = [
                    rule["record"]
                    for group in yaml.safe_load(RECORDING_RULES.read_text())["groups"]
                    for rule in group["rules"]
                    if "record" in rule and query(prom, rule["record"])
                ]
                assert len(recorded) >= 10
                for expr in [
                    *recorded,
                    *(
                        pictures.grafana_query(t["expr"], "scene-packer")
                        for panel in panels(dashboard)
                        for t in panel["targets"]
                    ),
                ]:
                    wait_until(
                        lambda e=expr: any(r["value"][1] != "NaN" for r in query(long_term, e)),
                        90,
                        f"VictoriaMetrics returned no data for {expr}",
                    )
                if os.environ.get("UPDATE_DASHBOARD_PICTURES"):  # docs/dashboards.md's pictures
                    time.sleep(PICTURE_MINUTES * 60 - (time.monotonic() - started))
                minutes = (time.monotonic() - started) / 60
                _draw_every_row(dashboard, prom, minutes, tmp_path / "pictures")


def _draw_every_row(dashboard: dict[str, Any], prom: str, minutes: float, out: Path) -> None:
    """Each row drawn from the data (tests/support/dashboard_pictures.py): every panel titled and
    with data. UPDATE_DASHBOARD_PICTURES=1 writes them for docs/dashboards.md."""
    if os.environ.get("UPDATE_DASHBOARD_PICTURES"):
        out = ROOT / "docs" / "images" / "dashboards"
    out.mkdir(parents=True, exist_ok=True)
    for row in pictures.rows(dashboard):
        svg = pictures.render_row(row, prom, "scene-packer", minutes)
        for panel in row.panels:
            assert f">{escape(panel['title'])}</text>" in svg, panel["title"]
        empty = re.findall(r'font-weight="bold">([^<]*)</text>(?:(?!font-weight).)*No data', svg)
        assert not empty, f"{row.title}: no data in {empty}"
        (out / f"{pictures.slug(row.title)}.svg").write_text(svg)


def test_alerts_fire_route_inhibit_and_resolve(tmp_path: Path, postgres_url: str) -> None:
    """Real Prometheus and Alertmanager, the database and Redis behind proxies that are cut: the
    cause pages, its symptoms stay quiet, the counter says why, and all of it resolves."""
    from sqlalchemy.engine import make_url

    database = ThreadedProxy(make_url(postgres_url).port or 5432)
    database.start()
    cache = ThreadedProxy(make_url(REDIS_URL).port or 6379)
    cache.start()
    via_proxy = make_url(postgres_url).set(host="127.0.0.1", port=database.port)
    env = _service_env(
        via_proxy.render_as_string(hide_password=False),
        REDIS_URL=f"redis://127.0.0.1:{cache.port}/0",
        HEALTH_CHECK_TIMEOUT="0.5",
        HEALTH_CACHE_TTL="0",
    )
    try:
        with (
            running_server(tmp_path, env, app="tests.support.apps:app") as server,
            Webhook() as webhook,
            alertmanager(tmp_path, webhook.url) as am,
        ):
            target = server.base_url.removeprefix("http://")
            config = prometheus_config(tmp_path, target, am.removeprefix("http://"), shorten=True)
            with prometheus(tmp_path, config) as prometheus_url:

                def received(status: str, alertname: str, severity: str) -> bool:
                    return any(a[1:] == (status, alertname, severity) for a in webhook.alerts())

                def firing(alertname: str) -> bool:
                    expr = f'ALERTS{{alertname="{alertname}", alertstate="firing"}}'
                    return bool(query(prometheus_url, expr))

                wait_until(lambda: received("firing", "Watchdog", "none"), 60, "no Watchdog")
                assert any(a[0] == "watchdog" for a in webhook.alerts())

                # The database goes: the cause pages first; the symptoms that follow (errors,
                # latency) fire in Prometheus and are held back by Alertmanager.
                database.cut()
                wait_until(
                    lambda: received("firing", "DatabaseDown", "critical"),
                    90,
                    f"DatabaseDown did not reach the pager: {webhook.alerts()}",
                )
                assert any(a[0] == "pager" for a in webhook.alerts())
                # The page links its runbook absolutely, from prometheus.yml's one base.
                base = yaml.safe_load(config.read_text())["global"]["external_labels"]
                assert base["runbook_base"].startswith("https://")
                (paged,) = {
                    alert["annotations"]["runbook_url"]
                    for note in list(webhook.notifications)
                    for alert in note["alerts"]
                    if alert["labels"]["alertname"] == "DatabaseDown"
                }
                assert paged == base["runbook_base"] + "#databasedown"
                slow = ["/test/slow/2300"] * 3
                with _background_traffic(server, ["/test/boom", *slow], 0.0):
                    # The symptoms' conditions hold, yet the rules keep them quiet while their
                    # cause fires (job:cause_alert:recent*): nothing for Alertmanager to
                    # hold back, nothing to send once the cause resolves.
                    for condition in (
                        "job:http_errors:rate5m * 60 > 10",
                        "job:http_request_duration_seconds:p95_5m > 2",
                        "job:cause_alert:recent10m == 1",
                    ):
                        wait_until(
                            lambda c=condition: bool(query(prometheus_url, c)), 90, condition
                        )
                    time.sleep(3)  # past the shortened `for:`: a symptom that could fire, has
                    assert not firing("HighErrorRate") and not firing("HighLatencyP95")
                    wait_until(
                        lambda: _login_refused_and_counted(server, prometheus_url),
                        30,
                        "a login's refused database was not counted with its cause",
                    )
                for alertname in ("HighErrorRate", "HighLatencyP95"):
                    assert not received("firing", alertname, "critical"), webhook.alerts()

                database.start()
                with _background_traffic(server, ["/"], 0.05):
                    wait_until(
                        lambda: received("resolved", "DatabaseDown", "critical"),
                        90,
                        f"DatabaseDown did not resolve: {webhook.alerts()}",
                    )
                    for alertname in ("HighErrorRate", "HighLatencyP95"):
                        wait_until(lambda n=alertname: not firing(n), 90, f"{alertname} stuck")

                # Redis goes: CacheDown pages, and resolves when it is back.
                cache.cut()
                wait_until(
                    lambda: received("firing", "CacheDown", "critical"),
                    90,
                    f"CacheDown did not reach the pager: {webhook.alerts()}",
                )
                cache.start()
                wait_until(
                    lambda: received("resolved", "CacheDown", "critical"),
                    90,
                    f"CacheDown did not resolve: {webhook.alerts()}",
                )
    finally:
        database.close()
        cache.close()


def _login_refused_and_counted(server: Server, prometheus_url: str) -> bool:
    credentials = {"username": "alice", "password": "correct horse battery"}
    with suppress(httpx.TransportError):
        httpx.post(server.base_url + "/api/auth/login", json=credentials, timeout=30)
    cause = 'dependency_errors_total{dependency="database", reason="refused"}'
    return any(float(sample["value"][1]) > 0 for sample in query(prometheus_url, cause))


def _wait_inhibited(am: str, alertname: str, severity: str) -> None:
    def inhibited() -> bool:
        alerts = httpx.get(
            am + "/api/v2/alerts", params={"filter": f'alertname="{alertname}"'}, timeout=10
        ).json()
        return any(
            alert["labels"].get("severity") == severity
            and alert["status"]["state"] == "suppressed"
            and alert["status"]["inhibitedBy"]
            for alert in alerts
        )

    wait_until(inhibited, 90, f"{alertname} {severity} was not inhibited")


SYMPTOMS = ("HighErrorRate", "HighLatencyP95", "ErrorBudgetBurn")


@pytest.mark.parametrize("cause", ["DatabaseDown", "CacheDown"])
def test_a_down_dependency_inhibits_its_own_jobs_symptoms_only(tmp_path: Path, cause: str) -> None:
    """Alerts posted straight to a real Alertmanager with the shipped configuration."""
    with Webhook() as webhook, alertmanager(tmp_path, webhook.url) as am:
        alerts = [
            {"labels": {"alertname": cause, "severity": "critical", "job": "a", "instance": "a:1"}},
            *(
                {"labels": {"alertname": name, "severity": "critical", "job": job}}
                for name in SYMPTOMS
                for job in ("a", "b")
            ),
        ]
        assert httpx.post(am + "/api/v2/alerts", json=alerts, timeout=10).status_code == 200

        def states() -> dict[tuple[str, str], str]:
            found = httpx.get(am + "/api/v2/alerts", timeout=10).json()
            return {
                (alert["labels"]["alertname"], alert["labels"]["job"]): alert["status"]["state"]
                for alert in found
            }

        wait_until(lambda: len(states()) == 7, 30, "Alertmanager did not take the alerts")
        wait_until(
            lambda: all(states()[(name, "a")] == "suppressed" for name in SYMPTOMS),
            30,
            f"symptoms of job a not inhibited: {states()}",
        )
        current = states()
    assert current[(cause, "a")] == "active"
    assert {
        current[(name, "b")] for name in ("HighErrorRate", "HighLatencyP95", "ErrorBudgetBurn")
    } == {"active"}


RUNBOOK_BASE = "https://wiki.example/ops/it's scene packer\\?a=1&b=2|c #ops"


def test_monitoring_run_on_ports_of_choice(tmp_path: Path, postgres_url: str) -> None:
    """monitoring/run as docs/monitoring.md shows it, on free ports and a runbook base of choice:
    Prometheus scrapes the service, itself and Alertmanager, sends to that Alertmanager, and
    links each alert's runbook from that base; SIGTERM stops both."""
    prometheus_address = f"127.0.0.1:{free_port()}"
    alertmanager_address = f"127.0.0.1:{free_port()}"
    blackbox_address = f"127.0.0.1:{free_port()}"
    with running_server(tmp_path, _service_env(postgres_url)) as server:
        service_address = server.base_url.removeprefix("http://")
        run = subprocess.Popen(
            [
                str(MONITORING / "run"),
                "--prometheus", prometheus_address,
                "--alertmanager", alertmanager_address,
                "--blackbox", blackbox_address,
                "--runbook-base", RUNBOOK_BASE,
                service_address,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://{prometheus_address}"

            def all_up() -> bool:
                # Until it is ready, Prometheus answers queries with a plain-text 503.
                with suppress(httpx.TransportError, ValueError):
                    found = query(url, "up == 1")
                    return {s["metric"]["job"] for s in found} == {
                        "scene-packer", "prometheus", "alertmanager", "blackbox"
                    }  # fmt: skip
                return False

            wait_until(all_up, 60, "Prometheus does not see the service, itself and Alertmanager")
            # The user's view, probed (the service itself here: no --probe given).
            wait_until(
                lambda: _probes_succeeding(url) == PROBE_MODULES, 60, "the probes do not succeed"
            )
            wait_until(
                lambda: bool(query(url, "prometheus_notifications_alertmanagers_discovered == 1")),
                60,
                "Prometheus did not find the Alertmanager it was given",
            )

            def watchdog_runbook() -> str | None:
                with suppress(httpx.TransportError):
                    alerts = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
                    for alert in alerts:
                        if alert["labels"]["alertname"] == "Watchdog":
                            return str(alert["annotations"]["runbook_url"])
                return None

            wait_until(lambda: watchdog_runbook() is not None, 60, "no Watchdog")
            assert watchdog_runbook() == RUNBOOK_BASE + "#watchdog"

            def watchdog_source() -> str | None:
                """The Watchdog's link to its source, as Alertmanager holds it."""
                with suppress(httpx.TransportError, ValueError):
                    held = httpx.get(f"http://{alertmanager_address}/api/v2/alerts", timeout=5)
                    for alert in held.json():
                        if alert["labels"]["alertname"] == "Watchdog":
                            return str(alert["generatorURL"])
                return None

            wait_until(lambda: watchdog_source() is not None, 60, "Alertmanager has no Watchdog")
            assert str(watchdog_source()).startswith(f"{url}/graph?")
        finally:
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=30)
    # SIGTERM stopped them all (monitoring/run waits for them before it exits).
    for address in (prometheus_address, alertmanager_address, blackbox_address):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{address}/-/ready", timeout=5)


PROBE_MODULES = {"scene_packer_ready", "scene_packer_sign_in_check"}


def _probes_succeeding(prometheus_url: str) -> set[str]:
    with suppress(httpx.TransportError, ValueError):
        return {s["metric"]["module"] for s in query(prometheus_url, "probe_success == 1")}
    return set()


def test_the_users_view_is_probed_through_the_load_balancer(
    tmp_path: Path, postgres_url: str
) -> None:
    """The blackbox exporter (monitoring/blackbox/blackbox.yml) probes the service through the
    HAProxy of deploy/haproxy, as prometheus.yml's `blackbox` job says: both probes succeed.
    With HAProxy stopped and the service itself fine (no cause alert to explain it), users
    cannot reach it: ProbeFailing fires for the service's job, once per probe."""
    require("haproxy")
    exporter = require("prometheus-blackbox-exporter")
    with running_server(tmp_path, _service_env(postgres_url)) as server, ExitStack() as stack:
        address = server.base_url.removeprefix("http://")
        balancer = stack.enter_context(running_haproxy(tmp_path, {"a": address, "b": address}))

        def sending() -> bool:
            with suppress(OSError):  # its stats socket is not there yet
                return balancer.status("a") == "UP"
            return False

        wait_until(sending, 60, "HAProxy never sent to the service")
        blackbox = f"127.0.0.1:{free_port()}"
        config_file = MONITORING / "blackbox" / "blackbox.yml"
        command = [exporter, f"--config.file={config_file}", f"--web.listen-address={blackbox}"]
        stack.enter_context(process(command, f"http://{blackbox}/-/healthy", tmp_path / "bb.log"))
        config = prometheus_config(
            tmp_path, address, None, shorten=True, blackbox=(blackbox, balancer.url)
        )
        prom = stack.enter_context(prometheus(tmp_path, config))
        wait_until(lambda: _probes_succeeding(prom) == PROBE_MODULES, 60, "the probes fail")
        assert not query(prom, 'ALERTS{alertname="ProbeFailing"}')

        balancer.close()

        def failing() -> set[tuple[str, str]]:
            found = query(prom, 'ALERTS{alertname="ProbeFailing", alertstate="firing"}')
            return {(a["metric"]["job"], a["metric"]["module"]) for a in found}

        wait_until(
            lambda: failing() == {("scene-packer", m) for m in PROBE_MODULES},
            90,
            "ProbeFailing did not fire for both probes",
        )
        assert query(prom, 'up{job="scene-packer"} == 1')  # the service itself was fine


def test_prometheus_stores_the_exemplars_it_scrapes(tmp_path: Path, postgres_url: str) -> None:
    """A real Prometheus (exemplar storage on, as monitoring/run starts it) asks for OpenMetrics
    by itself and keeps, for a slow request's latency bucket, a 500's count and an unhandled
    error's count, the request id the client received, which names a request_finished line."""
    env = {**_service_env(postgres_url, LOG_LEVEL="INFO"), **PRODUCTION_ENV}
    with running_server(tmp_path, env, app="tests.support.apps:app") as server:
        target = server.base_url.removeprefix("http://")
        config = prometheus_config(tmp_path, target, None, shorten=False)
        with prometheus(tmp_path, config) as url:
            trace = "4bf92f3577b34da6a3ce929d0e0e4736"
            traced = {"traceparent": f"00-{trace}-{'3' * 16}-01"}
            slow = httpx.get(server.base_url + "/test/slow/300", headers=traced, timeout=30)
            boom = httpx.get(server.base_url + "/test/boom", timeout=30)
            assert (slow.status_code, boom.status_code) == (200, 500)
            slow_id, boom_id = slow.headers["X-Request-ID"], boom.headers["X-Request-ID"]

            def kept(query: str) -> list[dict[str, str]]:
                now = time.time()
                found = httpx.get(
                    url + "/api/v1/query_exemplars",
                    params={"query": query, "start": now - 300, "end": now + 60},
                    timeout=10,
                ).json()["data"]
                return [e["labels"] for series in found for e in series["exemplars"]]

            for query, labels in (
                (
                    'http_request_duration_seconds_bucket{endpoint="/test/slow/<int:milliseconds>"}',
                    {"request_id": slow_id, "trace_id": trace},
                ),
                ('http_requests_total{status="500"}', {"request_id": boom_id}),
                ("app_errors_total", {"request_id": boom_id}),
            ):
                wait_until(
                    lambda q=query, want=labels: want in kept(q),
                    60,
                    f"Prometheus kept no exemplar {labels} for {query}: {kept(query)}",
                )
            # What Grafana asks for each panel that shows exemplars, and the links it builds.
            wanted = {
                "Latency p50 / p95 / p99": {"request_id": slow_id, "trace_id": trace},
                "5xx answers and unhandled errors, with their requests": {"request_id": boom_id},
            }
            shown = {
                panel["title"]: [
                    pictures.grafana_query(t["expr"], "scene-packer")
                    for t in panel["targets"]
                    if t.get("exemplar")
                ]
                for panel in panels(json.loads(DASHBOARD.read_text()))
            }
            assert {title for title, queries in shown.items() if queries} == set(wanted)
            for title, labels in wanted.items():
                for query in shown[title]:
                    assert labels in kept(query), (title, query, kept(query))
                _assert_log_search_finds(labels["request_id"])
    finished = {
        event["request_id"]: event
        for event in server.events()
        if event["event"] == "request_finished"
    }
    assert finished[slow_id]["trace_id"] == trace
    assert finished[boom_id]["status"] == 500


def test_what_pages_when_alertmanager_restarts(tmp_path: Path) -> None:
    """A real Alertmanager (group_wait shortened to 1 s), alerts posted as Prometheus re-sends
    them: a restart that keeps its storage pages nothing again when the cause is back within
    group_wait (tests/unit/test_monitoring.py keeps the shipped timings so); a symptom back
    before its cause, past group_wait, pages; a restart that lost its storage pages the cause
    again."""
    cause = {"labels": {"alertname": "DatabaseDown", "severity": "critical", "job": "a"}}
    symptom = {"labels": {"alertname": "HighErrorRate", "severity": "critical", "job": "a"}}

    def post(am: str, *alerts: dict[str, Any]) -> None:
        assert httpx.post(am + "/api/v2/alerts", json=list(alerts), timeout=10).status_code == 200

    def pages(webhook: Webhook) -> list[str]:
        return [name for receiver, status, name, _ in webhook.alerts() if receiver == "pager"]

    with Webhook() as webhook:
        with alertmanager(tmp_path, webhook.url) as am:
            post(am, cause, symptom)
            wait_until(lambda: pages(webhook) == ["DatabaseDown"], 30, "the cause was not paged")
            _wait_inhibited(am, "HighErrorRate", "critical")
        with alertmanager(tmp_path, webhook.url) as am:  # restarted, its storage kept
            post(am, symptom, cause)  # both back within group_wait
            _wait_inhibited(am, "HighErrorRate", "critical")
            # Three group_waits for a page that must not come (a busy machine can only make
            # this pass wrongly, never fail).
            time.sleep(3)
            assert pages(webhook) == ["DatabaseDown"]
        with alertmanager(tmp_path, webhook.url) as am:  # the symptom back alone, too long
            post(am, symptom)
            wait_until(lambda: "HighErrorRate" in pages(webhook), 30, "no page for the symptom")
            post(am, cause)
        (tmp_path / "storage-lost").mkdir()
        with alertmanager(tmp_path / "storage-lost", webhook.url) as am:
            post(am, cause, symptom)
            wait_until(lambda: pages(webhook).count("DatabaseDown") == 2, 30, "no second page")
            _wait_inhibited(am, "HighErrorRate", "critical")
    assert pages(webhook) == ["DatabaseDown", "HighErrorRate", "DatabaseDown"]
