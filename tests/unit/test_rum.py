"""POST /api/rum: what browsers report becomes bounded metrics; hostile input never hurts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from quart import Quart

from service.app import create_app
from service.observability.context import add_request_context
from service.observability.families import BEACON_REJECTIONS
from service.observability.rum import (
    ATTRIBUTION_MILLISECONDS,
    CLIENT_LOG_LINES_BURST,
    CORE_VITALS,
    ERROR_KINDS,
    LOG_LINES_BURST,
    NAVIGATION_TYPES,
    REJECTIONS,
    VITALS,
)
from service.settings import Settings
from tests.support.client import Client
from tests.support.metrics_helpers import Samples, parse, value

BOOKS = "/books/<int:book_id>"
DEMO_PAGES = ("layout-shift", "slow-interaction", "lcp-image", "xhr")


def _beacon(**parts: Any) -> dict[str, Any]:
    return {"page": "/books/42", **parts}


async def _post(client: Client, body: object, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        "/api/rum", data=data, headers={"Content-Type": "text/plain;charset=UTF-8", **headers}
    )


async def _samples(client: Client) -> Samples:
    return parse(await (await client.get("/metrics")).get_data(as_text=True))


def _rejected(samples: Samples, reason: str) -> float:
    return value(samples, "frontend_beacons_rejected_total", reason=reason)


@pytest.fixture
async def rum_app(settings: Settings) -> Any:
    app = create_app(settings.model_copy(update={"rum_pages": [BOOKS]}))
    async with app.test_app() as test_app:
        yield test_app.app


@pytest.fixture
def rum(rum_app: Quart) -> Client:
    return rum_app.test_client()


async def test_a_full_beacon_is_recorded(rum: Client) -> None:
    body = _beacon(
        metrics=[
            {"name": "FCP", "value": 1234.5},
            {"name": "LCP", "value": 2600},
            {"name": "INP", "value": 180},
            {"name": "TTFB", "value": 90},
            {"name": "CLS", "value": 0.04},
        ],
        errors=[{"kind": "TypeError", "message": "x is undefined"}],
        api=[
            {"endpoint": "/api/auth/me", "method": "GET", "status": 200, "duration": 85.2},
            {"endpoint": "/api/auth/login", "method": "POST", "status": 503, "duration": 40},
        ],
    )
    response = await _post(rum, body)
    assert response.status_code == 204
    samples = await _samples(rum)
    fcp = {"metric": "FCP", "page": BOOKS}
    assert value(samples, "frontend_web_vital_seconds_count", **fcp) == 1
    assert value(samples, "frontend_web_vital_seconds_sum", **fcp) == pytest.approx(1.2345)
    assert value(samples, "frontend_web_vital_seconds_bucket", **fcp, le="1.8") == 1
    assert value(samples, "frontend_web_vital_seconds_bucket", **fcp, le="1.0") == 0
    for metric in ("LCP", "INP", "TTFB"):
        assert value(samples, "frontend_web_vital_seconds_count", metric=metric, page=BOOKS) == 1
    assert value(samples, "frontend_cls_count", page=BOOKS) == 1
    assert value(samples, "frontend_cls_bucket", page=BOOKS, le="0.05") == 1
    assert value(samples, "frontend_js_errors_total", page=BOOKS, kind="TypeError") == 1
    me = {"endpoint": "/api/auth/me", "method": "GET"}
    assert value(samples, "frontend_api_request_duration_seconds_count", **me) == 1
    assert value(samples, "frontend_api_errors_total", endpoint="/api/auth/login") == 1
    assert value(samples, "frontend_api_errors_total", endpoint="/api/auth/me") == 0


async def test_json_content_type_and_empty_lists_are_accepted(rum: Client) -> None:
    response = await rum.post("/api/rum", json={"page": "/"})
    assert response.status_code == 204


async def test_buckets_hold_each_vitals_thresholds(rum: Client) -> None:
    await _post(rum, _beacon(metrics=[{"name": "FCP", "value": 1}, {"name": "CLS", "value": 0}]))
    samples = await _samples(rum)
    bounds = {
        float(dict(labels)["le"])
        for name, labels in samples
        if name == "frontend_web_vital_seconds_bucket"
    }
    assert {0.2, 0.5, 0.8, 1.8, 2.5, 3.0, 4.0} <= bounds
    cls_bounds = {float(dict(lbl)["le"]) for n, lbl in samples if n == "frontend_cls_bucket"}
    assert {0.1, 0.25} <= cls_bounds


async def test_pages_and_endpoints_are_templates_or_other(rum: Client) -> None:
    await _post(
        rum,
        {
            "page": "/users/alice@example.com?token=secret",
            "errors": [{"kind": "MyOwnError", "message": "boom"}],
            "api": [
                {"endpoint": "/api/users/12345", "method": "PURGE", "status": 0, "duration": 5}
            ],
        },
    )
    await _post(rum, {"page": "/rum/demo", "metrics": [{"name": "FCP", "value": 100}]})
    samples = await _samples(rum)
    assert value(samples, "frontend_js_errors_total", page="other", kind="other") == 1
    assert value(samples, "frontend_api_errors_total", endpoint="other") == 1
    other_api = {"endpoint": "other", "method": "OTHER"}
    assert value(samples, "frontend_api_request_duration_seconds_count", **other_api) == 1
    assert value(samples, "frontend_web_vital_seconds_count", metric="FCP", page="/rum/demo") == 1
    text = json.dumps([list(labels) for _, labels in samples])
    assert "alice" not in text and "secret" not in text and "12345" not in text


_TOO_MANY = {"page": "/", "metrics": [{"name": "FCP", "value": 1}] * 51}
_TOO_LARGE = {"page": "/", "errors": [{"kind": "Error", "message": "x" * 17000}]}


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "malformed"),
        (b"[1, 2, 3]", 400, "malformed"),
        (json.dumps({"page": "/", "metrics": "FCP"}).encode(), 400, "malformed"),
        (json.dumps(_TOO_MANY).encode(), 413, "too_many_entries"),
        (json.dumps(_TOO_LARGE).encode(), 413, "body_too_large"),
    ],
)
async def test_whole_beacon_rejections(rum: Client, body: bytes, status: int, reason: str) -> None:
    before = await _samples(rum)
    response = await _post(rum, body)
    assert response.status_code == status
    error = (await response.get_json())["error"]
    assert error["code"] == reason and error["request_id"]
    after = await _samples(rum)
    assert _rejected(after, reason) == _rejected(before, reason) + 1
    frontend = {k for k in after if k[0].startswith("frontend_")}
    assert frontend == {k for k in before if k[0].startswith("frontend_")}  # no new series


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"name": "FID", "value": 10}, "unknown_metric"),
        ({"name": ["FCP"], "value": 10}, "unknown_metric"),  # unhashable: was a 500
        ({"name": {"x": 1}, "value": 10}, "unknown_metric"),
        ({"name": "FCP", "value": -1}, "invalid_value"),
        ({"name": "LCP", "value": 61_000}, "invalid_value"),
        ({"name": "INP", "value": "fast"}, "invalid_value"),
        ({"name": "TTFB", "value": True}, "invalid_value"),
        ({"name": "CLS", "value": 50}, "invalid_value"),
        ("FCP", "malformed"),
    ],
)
async def test_bad_entries_are_dropped_and_counted(rum: Client, entry: object, reason: str) -> None:
    response = await _post(rum, _beacon(metrics=[entry, {"name": "FCP", "value": 500}]))
    assert response.status_code == 204
    samples = await _samples(rum)
    assert _rejected(samples, reason) == 1
    # the good entry beside it still counts; the bad one created no series
    assert value(samples, "frontend_web_vital_seconds_count", metric="FCP", page=BOOKS) == 1
    metrics = {dict(lb).get("metric") for n, lb in samples if n.startswith("frontend_web_vital")}
    assert metrics == {"FCP"}


async def test_a_lone_surrogate_loses_nothing(rum: Client) -> None:
    """Browsers' JSON.stringify writes a string cut inside an emoji as an escaped lone
    surrogate; orjson refuses it, so the receiver reads such a body another way."""
    body = (
        b'{"page": "/books/42", "metrics": [{"name": "FCP", "value": 100}],'
        b' "errors": [{"kind": "TypeError", "message": "boom \\ud83d"},'
        b' {"kind": "Error", "message": "x\\udc00y"}]}'
    )
    with structlog.testing.capture_logs() as events:
        assert (await _post(rum, body)).status_code == 204
    messages = [e["message"] for e in events if e["event"] == "frontend_error"]
    assert messages == ["boom ?", "x?y"]
    samples = await _samples(rum)
    assert value(samples, "frontend_web_vital_seconds_count", metric="FCP", page=BOOKS) == 1
    for literal in (b"NaN", b"1e999"):  # the other reader refuses what orjson refuses
        bad = b'{"page": "/", "errors": [{"kind": "\\ud800", "message": ' + literal + b"}]}"
        assert (await _post(rum, bad)).status_code == 400
    deep = b'{"x": "\\ud800", "y": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert (await _post(rum, deep)).status_code == 400


async def test_nan_and_infinity_are_refused(rum: Client) -> None:
    for literal in (b"NaN", b"Infinity", b"1e999"):
        body = b'{"page": "/", "metrics": [{"name": "FCP", "value": ' + literal + b"}]}"
        assert (await _post(rum, body)).status_code == 400
    samples = await _samples(rum)
    assert _rejected(samples, "malformed") == 3
    assert not [k for k in samples if k[0].startswith("frontend_web_vital")]


async def test_foreign_origin_is_refused_when_an_allow_list_is_set(settings: Settings) -> None:
    allowed = settings.model_copy(update={"rum_allowed_origins": ["https://books.example"]})
    app = create_app(allowed)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        ok = await _post(client, {"page": "/"}, Origin="https://books.example")
        foreign = await _post(client, {"page": "/"}, Origin="https://evil.example")
        missing = await _post(client, {"page": "/"})
        samples = await _samples(client)
    assert ok.status_code == 204
    assert foreign.status_code == missing.status_code == 403
    assert _rejected(samples, "foreign_origin") == 2


async def test_floods_get_429(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"rum_burst": 3, "rum_rate_per_second": 0.01}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        statuses = [(await _post(client, {"page": "/"})).status_code for _ in range(5)]
        samples = await _samples(client)
    assert statuses == [204, 204, 204, 429, 429]
    assert _rejected(samples, "rate_limited") == 2


async def test_js_errors_are_logged_without_user_data(rum: Client) -> None:
    message = (
        "Cannot load https://x.example/u?id=1 for bob@example.com order 123456789 " + "y" * 300
    )
    with structlog.testing.capture_logs() as events:
        await _post(rum, _beacon(errors=[{"kind": "TypeError", "message": message}]))
    logged = [e for e in events if e["event"] == "frontend_error"]
    assert len(logged) == 1
    line = logged[0]
    assert line["page"] == BOOKS and line["kind"] == "TypeError"
    assert len(line["message"]) <= 120
    for secret in ("x.example", "bob@example.com", "123456789"):
        assert secret not in line["message"]


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("fetch /api/me failed token=s3cr3t-T0KEN-value", "s3cr3t-T0KEN-value"),
        ("401 with Authorization: Bearer abc.DEF-ghi_123456", "abc.DEF-ghi_123456"),
        ("bad jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJlLXZhbHVl", "eyJzdWIiOiI0MiJ9"),
        ("key 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b failed", "9f86d081884c7d659a2f"),
        ("leaked sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc"),
        ("reset for carol.smith+books@mail.example", "carol.smith"),
        ("retry with pwd: SECRETPWD555", "SECRETPWD555"),
        ("resume session=SECRETSESSION888xyz", "SECRETSESSION888xyz"),
        ("header X-Api-Key: SECRETHDR125", "SECRETHDR125"),
        ("encoded ?token%3DSECRETENC000", "SECRETENC000"),
        ("two\nlines", "\n"),
    ],
)
async def test_js_error_messages_are_scrubbed_of_tokens(
    rum: Client, message: str, secret: str
) -> None:
    with structlog.testing.capture_logs() as events:
        await _post(rum, _beacon(errors=[{"kind": "Error", "message": message}]))
    (line,) = [e for e in events if e["event"] == "frontend_error"]
    assert secret not in line["message"]
    assert line["message"].split()[0] == message.split()[0]  # the rest of the message stays


async def test_rum_script_library_and_demo_pages(rum: Client, settings: Settings) -> None:
    script = await rum.get("/static/rum.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["Content-Type"]
    text = await script.get_data(as_text=True)
    assert "sendBeacon" in text and "web-vitals.attribution.iife.js" in text
    library = await rum.get("/static/web-vitals.attribution.iife.js")
    assert library.status_code == 200 and "javascript" in library.headers["Content-Type"]
    assert (await library.get_data(as_text=True)).startswith("var webVitals=")
    demos = ["/rum/demo", *(f"/rum/demo/{name}" for name in DEMO_PAGES)]
    for path in demos:
        page = await rum.get(path)
        assert page.status_code == 200, path
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert '<script src="/static/rum.js"></script>' in await page.get_data(as_text=True)
    cover = await rum.get("/rum/demo/cover.svg")
    assert cover.headers["Content-Type"] == "image/svg+xml"
    hidden = create_app(settings.model_copy(update={"rum_demo_enabled": False}))
    async with hidden.test_app() as test_app:
        for path in [*demos, "/rum/demo/demo.js"]:
            assert (await test_app.test_client().get(path)).status_code == 404, path


_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"


def _poor_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "web_vital_poor"]


async def test_a_poor_vital_is_logged_with_its_culprit(rum: Client) -> None:
    inp = {
        "name": "INP", "value": 608, "navigation": "navigate",
        "attribution": {
            "target": "#buy", "type": "pointer", "inputDelay": 1.1,
            "processingDuration": 601.14, "presentationDelay": 5.8, "loadState": "complete",
        },
    }  # fmt: skip
    lcp = {
        "name": "LCP", "value": 4256, "navigation": "back-forward-cache",
        "attribution": {
            "target": "#cover", "url": "https://cdn.example/covers/cover.svg?sig=abc#x",
            "timeToFirstByte": 5.3, "resourceLoadDelay": 4229.5, "resourceLoadDuration": 2.1,
            "elementRenderDelay": 19.1,
        },
    }  # fmt: skip
    cls = {"name": "CLS", "value": 0.31, "attribution": {"target": "div#content>p", "shift": 0.3}}
    with structlog.testing.capture_logs(processors=[add_request_context]) as events:
        response = await _post(rum, _beacon(metrics=[inp, lcp, cls]))
    assert response.status_code == 204
    inp_line, lcp_line, cls_line = _poor_lines(events)
    assert inp_line == {
        **inp_line,
        "page": BOOKS, "metric": "INP", "value": 608, "navigation": "navigate", "target": "#buy",
        "interaction_type": "pointer", "input_delay_ms": 1.1, "processing_duration_ms": 601.1,
        "presentation_delay_ms": 5.8, "load_state": "complete", "log_level": "warning",
    }  # fmt: skip
    assert inp_line["request_id"]  # the beacon's request, like every line of a request
    assert lcp_line["url_path"] == "<url>"  # a full URL is never logged, even without query
    assert lcp_line["navigation"] == "back-forward-cache"
    assert lcp_line["resource_load_delay_ms"] == 4229.5 and lcp_line["target"] == "#cover"
    assert cls_line["largest_shift_value"] == 0.3 and cls_line["target"] == "div#content>p"


async def test_good_vitals_and_poor_fcp_or_ttfb_are_not_logged(rum: Client) -> None:
    metrics = [
        {"name": "INP", "value": 500, "attribution": {"target": "#a"}},  # at the line: not poor
        {"name": "LCP", "value": 2500},
        {"name": "CLS", "value": 0.25},
        {"name": "FCP", "value": 9000},  # poor, but no culprit to act on
        {"name": "TTFB", "value": 9000},
    ]
    with structlog.testing.capture_logs() as events:
        await _post(rum, _beacon(metrics=metrics))
    assert not _poor_lines(events)
    samples = await _samples(rum)
    assert value(samples, "frontend_web_vital_seconds_count", metric="INP", page=BOOKS) == 1


@pytest.mark.parametrize(
    ("attribution", "expected"),
    [
        ({"target": "#user-jane.doe@mail.example"}, {"target": "<email>"}),
        ({"target": "#card-of-alice.smith@ex"}, {"target": "<email>"}),  # cut short
        ({"target": "#bob@localhost>img"}, {"target": "<email>>img"}),
        ({"target": "#a\u202eb\u200bc\x00d"}, {"target": "#abcd"}),  # bidi, zero-width, NUL
        ({"target": "#n-123-45-678"}, {"target": "#n-<number>"}),
        ({"target": "tel +44 (20) 7946 0958"}, {"target": "tel <number>"}),
        ({"target": "v1.2.3 at 12:30"}, {"target": "v1.2.3 at 12:30"}),
        ({"url": "/u/alice%40example.com/photo.jpg"}, {"url_path": "/u/<email>/photo.jpg"}),
        ({"url": "/covers/%34%31%32%33%34%35.jpg"}, {"url_path": "/covers/<number>.jpg"}),
        ({"processingDuration": -0.0}, {"processing_duration_ms": 0.0}),
        ({"target": "#order-1234567>td"}, {"target": "#order-<number>>td"}),
        ({"target": "x" * 500}, {"target": "x" * 100}),
        ({"target": "a\nb\tc"}, {"target": "a b c"}),
        ({"target": "img[src=/covers/1.jpg?t=secret]>x?y"}, {"target": "img[src=/covers/1.jpg>x"}),
        ({"url": "/covers/4412345678.jpg?token=abc"}, {"url_path": "/covers/<number>.jpg"}),
        ({"url": f"/reset/{_JWT}"}, {"url_path": "/reset/[REDACTED]"}),
        ({"type": "telepathy", "loadState": "<script>"}, {}),
        ({"inputDelay": -1, "processingDuration": "600", "presentationDelay": 1e12}, {}),
        ({"inputDelay": True, "shift": 99}, {}),
        ({"target": ["#a"], "url": {"x": 1}, "time": None}, {}),
        ("#slow", {}),
        (None, {}),
    ],
)  # fmt: skip
async def test_a_culprit_is_scrubbed_bounded_and_typed(
    rum: Client, attribution: object, expected: dict[str, Any]
) -> None:
    entry = {"name": "INP", "value": 900, "navigation": "x" * 50, "attribution": attribution}
    with structlog.testing.capture_logs() as events:
        assert (await _post(rum, _beacon(metrics=[entry]))).status_code == 204
    (line,) = _poor_lines(events)
    culprit = {k: v for k, v in line.items() if k not in {"event", "log_level", "page", "metric"}}
    assert culprit == {"value": 900, **expected}  # an unknown navigation is left out
    assert str(culprit.get("processing_duration_ms")) != "-0.0"


async def test_beacon_log_lines_have_a_budget_and_the_rest_are_counted(rum: Client) -> None:
    """A budget per client address, and one for the worker: one client cannot fill the log,
    nor many clients together; what is not written is counted, and every error still is."""
    errors = [{"kind": "TypeError", "message": "x is undefined"}] * 50

    async def post(client: str, count: int) -> None:
        body = json.dumps(_beacon(errors=errors[:count])).encode()
        response = await rum.post(
            "/api/rum", data=body, headers={"Content-Type": "text/plain"},
            scope_base={"client": (client, 40000)},
        )  # fmt: skip
        assert response.status_code == 204

    with structlog.testing.capture_logs() as events:
        for _ in range(3):
            await post("192.0.2.1", 50)
    one_client = len([e for e in events if e["event"] == "frontend_error"])
    assert CLIENT_LOG_LINES_BURST <= one_client < CLIENT_LOG_LINES_BURST + 10
    with structlog.testing.capture_logs() as events:
        for n in range(10):
            await post(f"192.0.2.{10 + n}", 20)
    many_clients = len([e for e in events if e["event"] == "frontend_error"])
    logged = one_client + many_clients
    assert LOG_LINES_BURST <= logged < LOG_LINES_BURST + 30  # 350 asked for
    samples = await _samples(rum)
    dropped = value(samples, "frontend_log_lines_dropped_total", event="frontend_error")
    assert logged + dropped == 350
    assert value(samples, "frontend_js_errors_total", page=BOOKS, kind="TypeError") == 350


_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
)


_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


_attribution = st.dictionaries(
    st.sampled_from(
        ["target", "url", "type", "loadState", "shift", *ATTRIBUTION_MILLISECONDS, "other"]
    ),
    st.text(max_size=300)
    | st.sampled_from(["pointer", "keyboard", "complete", "/covers/1.jpg?t=secret"])
    | st.floats()
    | st.integers(),
    max_size=10,
)


_LOG_FIELDS = {
    "event", "log_level", "page", "metric", "value", "navigation", "target", "url_path",
    "interaction_type", "load_state", "largest_shift_value", *ATTRIBUTION_MILLISECONDS.values(),
}  # fmt: skip


_paths = st.sampled_from(["/api/auth/me", "/api/x/1", "/", "//", "/api/auth/login?x=1"])


_entry = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["FCP", "LCP", "INP", "TTFB", "CLS", "FID"]) | st.text(max_size=8),
        "value": st.floats(allow_nan=False) | st.integers() | st.text(max_size=5) | st.booleans(),
        "kind": st.sampled_from(sorted(ERROR_KINDS)) | st.text(max_size=12),
        "message": st.text(max_size=50),
        "endpoint": _paths | st.text(max_size=20),
        "method": st.sampled_from(["GET", "POST", "get", "BREW"]) | st.text(max_size=6),
        "status": st.integers(min_value=-5, max_value=700) | st.text(max_size=3),
        "duration": st.floats(allow_nan=False) | st.integers(min_value=-10, max_value=10**9),
        "navigation": st.sampled_from(sorted(NAVIGATION_TYPES)) | st.text(max_size=8) | _json,
        "attribution": _attribution | _json,
    },
)


_poor_entry = st.one_of(
    *(
        st.fixed_dictionaries(
            {"name": st.just(name), "value": st.floats(low, high)},
            optional={
                "navigation": st.sampled_from(sorted(NAVIGATION_TYPES)) | _json,
                "attribution": _attribution | _json,
            },
        )
        for name, low, high in (("LCP", 4001, 60_000), ("INP", 501, 60_000), ("CLS", 0.26, 10))
    )
)


_lists = st.lists(_entry | _poor_entry, max_size=8) | _json


_payloads = (
    st.fixed_dictionaries(
        {},
        optional={
            "page": st.sampled_from(["/books/42", "/", "/rum/demo"]) | st.text(max_size=40),
            "metrics": _lists,
            "errors": _lists,
            "api": _lists,
        },
    )
    | _json
)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_random_payloads_never_5xx_nor_unbounded_series(settings: Settings) -> None:
    unlimited = {"rum_pages": [BOOKS], "rum_burst": 100_000}
    app = create_app(settings.model_copy(update=unlimited))
    async with app.test_app() as test_app:
        await _post_random_payloads(test_app.app)


async def _post_random_payloads(rum_app: Quart) -> None:
    client = rum_app.test_client()
    loop = asyncio.get_running_loop()
    statuses: list[int] = []

    # hypothesis drives synchronously, from a thread; each example is posted on the app's loop.
    @hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payload=_payloads)
    def post_examples(payload: object) -> None:
        response = asyncio.run_coroutine_threadsafe(_post(client, payload), loop).result(30)
        statuses.append(response.status_code)

    with structlog.testing.capture_logs() as events:
        await asyncio.to_thread(post_examples)
    assert statuses and set(statuses) <= {204, 400, 413}
    poor = _poor_lines(events)
    assert poor  # the examples reach the log line
    for line in poor:
        assert set(line) <= _LOG_FIELDS, line
        assert (
            line["metric"] in CORE_VITALS and line.get("navigation", "navigate") in NAVIGATION_TYPES
        )
        for field in ("target", "url_path"):
            text = line.get(field, "")
            assert len(text) <= 100 and "\n" not in text and "secret" not in text, line
        numbers = [v for k, v in line.items() if k.endswith("_ms") or k == "largest_shift_value"]
        assert all(isinstance(n, float) and 0 <= n <= 60_000 for n in numbers), line
    templates = {rule.rule for rule in rum_app.url_map.iter_rules()} | {BOOKS, "other"}
    for name, labels in await _samples(client):
        if not name.startswith("frontend_"):
            continue
        label = dict(labels)
        assert label.get("page", "other") in templates
        assert label.get("endpoint", "other") in templates
        assert label.get("metric", "FCP") in VITALS
        assert label.get("kind", "other") in ERROR_KINDS | {"other"}
        assert label.get("reason", "malformed") in BEACON_REJECTIONS


def test_every_refusal_reason_has_its_message() -> None:
    assert sorted(REJECTIONS) == sorted(BEACON_REJECTIONS)
