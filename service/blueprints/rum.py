"""Browser beacons: `POST /api/rum`, and the demo page `GET /rum/demo` that uses rum.js."""

from __future__ import annotations

from pydantic import BaseModel
from quart import Blueprint, Quart, Response, request
from quart_schema import document_request, document_response, hide

from service.api_docs import NoContent, declare_errors
from service.errors import APIError
from service.observability.metrics import Metrics
from service.observability.rum import REJECTIONS, BeaconReceiver, Rejected
from service.proxy_fix import client_address
from service.settings import Settings


class VitalEntry(BaseModel):
    name: str  # FCP, LCP, INP, TTFB (milliseconds) or CLS (unitless)
    value: float


class ErrorEntry(BaseModel):
    kind: str
    message: str = ""


class ApiEntry(BaseModel):
    endpoint: str
    method: str = "GET"
    status: int
    duration: float  # milliseconds


class Beacon(BaseModel):
    """A browser's beacon (README.md, Frontend monitoring), also accepted as text/plain as
    `sendBeacon` sends it. An entry that does not fit is dropped and counted, not refused."""

    page: str | None = None
    metrics: list[VitalEntry] = []
    errors: list[ErrorEntry] = []
    api: list[ApiEntry] = []


def create_blueprint(app: Quart, settings: Settings, metrics: Metrics) -> Blueprint:
    """`POST /api/rum` and the demo page; the receiver is built once every route of `app` is
    registered, because API timings are labelled by those templates."""
    blueprint = Blueprint("rum", __name__)
    receivers: list[BeaconReceiver] = []

    @app.before_serving
    async def _receiver() -> None:
        receivers[:] = [BeaconReceiver(metrics, settings, app.url_map.bind("localhost"))]

    @blueprint.post("/api/rum")
    @document_request(Beacon)
    @document_response(NoContent, 204)
    @declare_errors(400, 403, 413, 429)
    async def beacon() -> Response:
        receiver = receivers[0]
        client = client_address(request.scope)
        try:
            receiver.admit(client, request.headers.get("Origin"), request.content_length)
            body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
            receiver.receive(body)
        except Rejected as rejected:
            headers = {"Retry-After": "1"} if rejected.status == 429 else None
            raise APIError(
                rejected.status, rejected.reason, REJECTIONS[rejected.reason], headers
            ) from None
        return Response(status=204)

    if settings.rum_demo:  # development only, unless RUM_DEMO_ENABLED: not in the API

        @blueprint.get("/rum/demo")
        @hide
        async def demo() -> Response:
            return Response(_DEMO_PAGE, content_type="text/html; charset=utf-8")

    return blueprint


_DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Scene Packer RUM demo</title>
<script src="/static/rum.js"></script>
</head>
<body>
<h1>Real-user monitoring demo</h1>
<p>This page reports its timings, a deliberate JavaScript error and the timing of an API call
to <code>POST /api/rum</code> when it is hidden or left.</p>
<button id="shift" type="button">Click me</button>
<script>
  fetch("/api/auth/me").catch(function () {});
  setTimeout(function () { null.deliberate; }, 50);
  if (new URLSearchParams(location.search).has("leave")) {
    setTimeout(function () { location.href = "/"; }, 1500);
  }
</script>
</body>
</html>
"""
