"""rum.js in a real browser (Debian's headless Chromium, over the DevTools protocol), on the demo
pages the service serves: what the beacon delivers is what Google's web-vitals library reports in
the same page (service/rum_demo/demo.js keeps the library's own values in localStorage), and a
poor vital reaches the log with its culprit."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import Page, chromium, open_page
from tests.support.metrics_helpers import Samples, parse, value
from tests.support.server import PRODUCTION_ENV, Server, running_server
from tests.support.waiting import wait_until

TIMED = ("FCP", "LCP", "INP", "TTFB")
FRAME_MS = 1000 / 60
REUSED_XHR = """(async () => {
  const xhr = new XMLHttpRequest();
  const call = (url) => new Promise(done => {
    xhr.onloadend = () => done(xhr.status);
    xhr.open("GET", url);
    xhr.send();
  });
  return [await call("/api/auth/me"), await call(new URL("/api/auth/me", location.href)),
          await call("/")];
})()"""
# Headless Chromium may never be idle: an idle callback runs at its timeout.
IDLE = "new Promise(done => requestIdleCallback(done, {timeout: 1000}))"
# web-vitals takes in an interaction's entries when the page is next idle, or at the latest
# 1 s later (its requestIdleCallback timeout): a page left sooner reports no INP for it.
INTERACTION_PROCESSED = "new Promise(done => setTimeout(done, 1100))"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Server, Page]]:
    """The service in production mode (JSON log lines) with its demo pages, and a browser tab."""
    env = {**PRODUCTION_ENV, "RUM_DEMO_ENABLED": "true", "LOG_LEVEL": "INFO"}
    with running_server(tmp_path, env) as server, chromium(tmp_path) as socket:
        yield server, open_page(socket, "about:blank")


def test_cls_is_the_largest_session_window_not_the_sum(site: tuple[Server, Page]) -> None:
    server, page = site
    path = "/rum/demo/layout-shift"
    page.load(server.base_url + path)
    wait_until(  # the second burst, set off 2.3 s into the page, has been reported
        lambda: float(page.evaluate(f"localStorage.getItem('layout-shift-last:{path}')")) >= 2300,
        30,
        "the second burst of layout shifts never came",
    )
    library = _leave(server, page, path)
    every_shift = float(page.evaluate(f"localStorage.getItem('layout-shifts:{path}')"))

    samples = _beacon_arrived(server, path, library)
    cls = value(samples, "frontend_cls_sum", page=path)
    assert cls == library["CLS"][0]  # exactly what web-vitals reports
    assert 0.25 < cls < every_shift - 0.1  # the larger burst, not both
    line = _poor(server, "CLS", path)
    assert line["value"] == cls and line["largest_shift_value"] > 0.25
    assert line["target"] and line["load_state"] == "complete"


def test_a_slow_click_reports_a_poor_inp_with_its_target(site: tuple[Server, Page]) -> None:
    server, page = site
    path = "/rum/demo/slow-interaction"
    page.load(server.base_url + path)
    page.evaluate(IDLE)
    page.click("#slow")
    page.evaluate(INTERACTION_PROCESSED)
    assert page.evaluate("document.getElementById('clicks').textContent") == "1"
    library = _leave(server, page, path)
    assert library.get("INP"), library

    samples = _beacon_arrived(server, path, library)
    assert value(samples, "frontend_web_vital_seconds_count", metric="INP", page=path) == 1
    line = _poor(server, "INP", path)
    assert line["value"] == library["INP"][0] >= 600  # the handler blocks for 600 ms
    assert line.get("target") == "#slow" and line["interaction_type"] == "pointer", json.dumps(line)
    assert line["processing_duration_ms"] >= 590


def test_a_late_image_reports_a_poor_lcp_with_its_element(site: tuple[Server, Page]) -> None:
    server, page = site
    path = "/rum/demo/lcp-image"
    page.load(server.base_url + path)
    page.evaluate(
        "new Promise(done => { const wait = () => document.querySelector('#cover')?.complete"
        " ? setTimeout(done, 300) : setTimeout(wait, 50); wait(); })"
    )
    library = _leave(server, page, path)

    _beacon_arrived(server, path, library)
    line = _poor(server, "LCP", path)
    assert line["value"] == library["LCP"][-1] > 4000
    assert line["target"] == "#cover" and line["url_path"] == "/rum/demo/cover.svg"
    assert line["resource_load_delay_ms"] > 4000  # the image was asked for late


def test_xhr_calls_are_timed_and_a_failing_one_counted(site: tuple[Server, Page]) -> None:
    server, page = site
    path = "/rum/demo/xhr"
    # The browser's network fails the logout call: the one failure here that needs a hand.
    page.send("Fetch.enable", patterns=[{"urlPattern": "*/api/auth/logout*"}])
    page.send("Page.navigate", url=server.base_url + path)
    paused = page.wait_for("Fetch.requestPaused", 30)["params"]
    page.send("Fetch.failRequest", requestId=paused["requestId"], errorReason="ConnectionRefused")
    page.wait_for("Page.loadEventFired", 30)
    wait_until(lambda: page.evaluate("document.getElementById('done').textContent"), 30, "xhr")
    assert page.evaluate("document.getElementById('done').textContent") == "401 0"
    page.send("Fetch.disable")
    # One request object opened and sent twice (and once to a page that is not the API): each
    # call is timed once.
    assert page.evaluate(REUSED_XHR) == [401, 401, 200]
    library = _leave(server, page, path)

    samples = _beacon_arrived(server, path, library)
    me = {"endpoint": "/api/auth/me", "method": "GET"}
    logout = {"endpoint": "/api/auth/logout", "method": "POST"}
    assert value(samples, "frontend_api_request_duration_seconds_count", **me) == 3
    assert value(samples, "frontend_api_request_duration_seconds_count", **logout) == 1
    assert value(samples, "frontend_api_errors_total", endpoint="/api/auth/logout") == 1
    assert value(samples, "frontend_api_errors_total", endpoint="/api/auth/me") == 0


def test_a_back_forward_cache_restore_sends_its_own_beacon(site: tuple[Server, Page]) -> None:
    server, page = site
    path = "/rum/demo"  # it also throws an error and calls the API with fetch
    page.load(server.base_url + path)
    wait_until(lambda: _api_called(server), 30, "the page never called the API")
    page.load(server.base_url + "/rum/demo/xhr")
    history = page.send("Page.getNavigationHistory")
    page.send("Page.navigateToHistoryEntry", entryId=history["entries"][-2]["id"])
    wait_until(
        lambda: "restored" in _library_values(page, path),
        30,
        f"not restored from the back/forward cache: {_bfcache_refusals(page)}",
    )
    # web-vitals reports the restore's FCP and LCP two animation frames after pageshow, to
    # rum.js's registration, then to demo.js's: a page left sooner reports them once hidden,
    # after rum.js has sent its last beacon, or never (frozen in the cache).
    wait_until(
        lambda: all(len(_library_values(page, path).get(name, [])) == 2 for name in ("FCP", "LCP")),
        30,
        "the library never reported the restore's FCP and LCP",
    )
    library = _leave(server, page, path)
    assert len(library["FCP"]) == len(library["TTFB"]) == 2  # the load, then the restore
    assert library["TTFB"][1] == 0

    samples = _beacon_arrived(server, path, library, restored=True)
    assert value(samples, "frontend_js_errors_total", page=path, kind="TypeError") == 1
    fetched = {"endpoint": "/api/auth/me", "method": "GET"}
    assert value(samples, "frontend_api_request_duration_seconds_count", **fetched) >= 1


HOSTILE_PAGE = r"""(async () => {
  for (let i = 0; i < 3; i++) setTimeout(() => { throw {name: 1n, message: "m"}; }, 0);
  setTimeout(() => {
    throw new Error("x".repeat(133) + "\u{1F600} tail, alice.smith@example.com");
  }, 0);
  Promise.reject(Object.create(null));
  await new Promise(done => setTimeout(done, 100));
  const statuses = [];
  for (let i = 0; i < 40; i++) statuses.push((await fetch("/api/auth/me")).status);
  for (let i = 0; i < 25; i++) {
    statuses.push((await fetch("/api/books/" + "a".repeat(700) + i)).status);
  }
  statuses.push(await new Promise(done => {  // sent again from its own load handler
    const xhr = new XMLHttpRequest();
    let calls = 0;
    xhr.onload = () => {
      if (calls++ < 1) { xhr.open("GET", "/api/auth/me?again"); xhr.send(); }
      else done(xhr.status);
    };
    xhr.open("GET", "/api/auth/me");
    xhr.send();
  }));
  const foreign = "http://localhost:" + location.port + "/api/health";  // another origin
  await fetch(foreign, {mode: "no-cors"}).catch(() => {});
  await new Promise(done => {
    const xhr = new XMLHttpRequest();
    xhr.onloadend = done;
    xhr.open("GET", foreign);
    xhr.send();
  });
  return statuses;
})()"""


def test_hostile_page_code_breaks_neither_the_page_nor_the_beacons(
    site: tuple[Server, Page],
) -> None:
    """Errors whose name cannot be serialised, an emoji cut in half, a rejection that cannot
    be printed, API paths long enough to make a beacon too large, a request object sent again
    from its own handler: the page's calls all answer, rum.js throws nothing, and every call
    and error reaches the service, none refused. Calls to another origin are not timed."""
    server, page = site
    page.send("Runtime.enable")
    page.load(server.base_url + "/rum/demo/xhr")
    statuses = page.evaluate(HOSTILE_PAGE)
    assert statuses == [401] * 40 + [404] * 25 + [401]
    _leave(server, page, "/rum/demo/xhr")

    me = {"endpoint": "/api/auth/me", "method": "GET"}
    other = {"endpoint": "other", "method": "GET"}

    def arrived() -> bool:
        samples = _scrape(server)
        return (
            value(samples, "frontend_api_request_duration_seconds_count", **me) == 1 + 40 + 2
            and value(samples, "frontend_api_request_duration_seconds_count", **other) == 25
        )

    wait_until(arrived, 30, f"API timings lost:\n{_tail(server)}")
    samples = _scrape(server)
    page_errors = {"page": "/rum/demo/xhr"}
    assert value(samples, "frontend_js_errors_total", **page_errors, kind="other") == 3
    assert value(samples, "frontend_js_errors_total", **page_errors, kind="Error") == 1
    assert value(samples, "frontend_js_errors_total", **page_errors, kind="unhandledrejection") == 1
    assert value(samples, "frontend_api_errors_total", endpoint="/api/auth/me") == 0
    health = {"endpoint": "/api/health", "method": "GET"}
    assert value(samples, "frontend_api_request_duration_seconds_count", **health) == 0
    for reason in ("malformed", "body_too_large", "too_many_entries", "invalid_value"):
        assert value(samples, "frontend_beacons_rejected_total", reason=reason) == 0, reason
    thrown = [e for e in page.events if e.get("method") == "Runtime.exceptionThrown"]
    assert thrown and not [e for e in thrown if "rum.js" in json.dumps(e)]
    messages = [line["message"] for line in server.events() if line["event"] == "frontend_error"]
    assert any("\ufffd" not in m and m.startswith("Uncaught Error: xxx") for m in messages)
    assert not [m for m in messages if "alice" in m or "example.com" in m]


FOREIGN_PAGE = """<!doctype html><html><head><title>A shop on a CDN</title>
<script src="{service}/static/rum.js" data-endpoint="{service}/api/rum"></script></head>
<body><p id="done"></p><script>
(async () => {{
  const answers = [];
  answers.push(await fetch("{service}/api/auth/me").then(r => r.status, () => "blocked"));
  answers.push(await new Promise(done => {{
    const xhr = new XMLHttpRequest();
    xhr.onloadend = () => done(xhr.status);
    xhr.open("GET", "{service}/api/auth/me");
    xhr.send();
  }}));
  answers.push(await fetch("/api/cart").then(r => r.status));  // the page's own origin
  document.getElementById("done").textContent = answers.join(" ");
}})();
</script></body></html>"""


def test_a_page_on_another_origin_times_its_calls_to_the_service(
    site: tuple[Server, Page],
) -> None:
    """The common single-page setup: the app on a CDN, the API on the service. Its calls to the
    service's origin (the beacon endpoint's) are timed; its calls to anywhere else are not."""
    server, page = site

    class Shop(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/shop.html"
            body = FOREIGN_PAGE.format(service=server.base_url).encode() if found else b""
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    shop = ThreadingHTTPServer(("127.0.0.1", 0), Shop)
    threading.Thread(target=shop.serve_forever, daemon=True).start()
    try:
        page.load(f"http://127.0.0.1:{shop.server_address[1]}/shop.html")
        wait_until(
            lambda: page.evaluate("document.getElementById('done').textContent"), 30, "calls"
        )
        # No CORS headers on the service: the browser calls it, then hides the answer (0).
        assert page.evaluate("document.getElementById('done').textContent") == "blocked 0 404"
        page.load(server.base_url + "/")  # leaving the page sends its beacon
        me = {"endpoint": "/api/auth/me", "method": "GET"}
        wait_until(
            lambda: (
                value(_scrape(server), "frontend_api_request_duration_seconds_count", **me) == 2
            ),
            30,
            f"the calls to the service were not timed:\n{_tail(server)}",
        )
    finally:
        shop.shutdown()
        shop.server_close()
    samples = _scrape(server)
    cart = {"endpoint": "other", "method": "GET"}  # /api/cart is no route of the service's
    assert value(samples, "frontend_api_request_duration_seconds_count", **cart) == 0


def _leave(server: Server, page: Page, path: str) -> dict[str, list[float]]:
    """Leave the page (it is hidden, so both rum.js and the library report) for the service's
    root, and read what the library reported there."""
    page.load(server.base_url + "/")
    return _library_values(page, path)


def _library_values(page: Page, path: str) -> dict[str, list[float]]:
    stored = page.evaluate(f"localStorage.getItem('web-vitals:{path}')")
    values: dict[str, list[float]] = json.loads(stored or "{}")
    return values


def _beacon_arrived(
    server: Server, path: str, library: dict[str, list[float]], restored: bool = False
) -> Samples:
    """Wait until /metrics holds as many values of each vital as the library reported in the
    page, then check that they are the same values: within 1 ms, CLS exactly. After a restore
    from the back/forward cache, the library times FCP and LCP with the clock read in its own
    animation-frame callback, once per registration (rum.js's and demo.js's): those two may
    differ by the work done between them, within one frame."""
    assert library.get("FCP"), f"the library reported nothing on {path}: {library}"

    def counts(samples: Samples) -> dict[str, float]:
        found = {
            name: value(samples, "frontend_web_vital_seconds_count", metric=name, page=path)
            for name in TIMED
        }
        found["CLS"] = value(samples, "frontend_cls_count", page=path)
        return found

    expected = {name: float(len(library.get(name, []))) for name in (*TIMED, "CLS")}
    try:
        wait_until(lambda: counts(_scrape(server)) == expected, 30, "")
    except AssertionError:
        seen = counts(_scrape(server))
        raise AssertionError(
            f"the beacon of {path} never matched {expected}, /metrics has {seen}:\n{_tail(server)}"
        ) from None
    samples = _scrape(server)
    for name in TIMED:
        seconds = value(samples, "frontend_web_vital_seconds_sum", metric=name, page=path)
        tolerance = 1 + (FRAME_MS if restored and name in ("FCP", "LCP") else 0)
        assert seconds * 1000 == pytest.approx(sum(library.get(name, [])), abs=tolerance), name
    assert value(samples, "frontend_cls_sum", page=path) == sum(library.get("CLS", []))
    return samples


def _poor(server: Server, metric: str, path: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [
            line
            for line in server.events()
            if line.get("event") == "web_vital_poor"
            and line.get("metric") == metric
            and line.get("page") == path
        ]

    wait_until(lambda: bool(found()), 30, f"no web_vital_poor {metric} line:\n{_tail(server)}")
    (line,) = found()
    return line


def _bfcache_refusals(page: Page) -> list[Any]:
    return [
        event["params"].get("notRestoredExplanations")
        for event in page.events
        if event.get("method") == "Page.backForwardCacheNotUsed"
    ]


def _scrape(server: Server) -> Samples:
    return parse(httpx.get(server.base_url + "/metrics", timeout=10).text)


def _api_called(server: Server) -> bool:
    called = {"method": "GET", "endpoint": "/api/auth/me", "status": "401"}
    return value(_scrape(server), "http_requests_total", **called) >= 1


def _tail(server: Server) -> str:
    return server.output.read_text()[-3000:]
