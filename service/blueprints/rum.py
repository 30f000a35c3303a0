"""Browser beacons: `POST /api/rum`, and the demo page `GET /rum/demo` that uses rum.js."""

from __future__ import annotations

from quart import Blueprint, Quart, Response, request

from service.errors import APIError
from service.observability.metrics import Metrics
from service.observability.rum import REJECTIONS, BeaconReceiver, Rejected
from service.proxy_fix import client_address
from service.settings import Settings


def create_blueprint(app: Quart, settings: Settings, metrics: Metrics) -> Blueprint:
    """`POST /api/rum` and the demo page; the receiver is built once every route of `app` is
    registered, because API timings are labelled by those templates."""
    blueprint = Blueprint("rum", __name__)
    receivers: list[BeaconReceiver] = []

    @app.before_serving
    async def _receiver() -> None:
        receivers[:] = [BeaconReceiver(metrics, settings, app.url_map.bind("localhost"))]

    @blueprint.post("/api/rum")
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

    @blueprint.get("/rum/demo")
    async def demo() -> Response:
        if not settings.rum_demo:
            raise APIError(404, "not_found", "No such resource.")
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
