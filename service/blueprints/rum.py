"""Browser beacons: `POST /api/rum`, and the demo page `GET /rum/demo` that uses rum.js."""

from __future__ import annotations

from quart import Blueprint, Quart, Response, current_app, request

from service.errors import APIError
from service.observability.context import request_client_ip
from service.observability.rum import BeaconReceiver, Rejected
from service.settings import Settings

blueprint = Blueprint("rum", __name__)

_MESSAGES = {
    "body_too_large": "The beacon is larger than 16 KB.",
    "malformed": "The beacon is not a JSON object of the documented shape.",
    "too_many_entries": "The beacon holds more than 50 entries.",
    "foreign_origin": "Beacons from this origin are not accepted.",
    "rate_limited": "Too many beacons from this client; retry later.",
}


def init_rum(app: Quart, settings: Settings) -> None:
    @app.before_serving
    async def _receiver() -> None:
        # Built once every route is registered: API timings are labelled by these templates.
        rules = app.url_map.bind("localhost")
        app.extensions["rum"] = BeaconReceiver(app.extensions["metrics"], settings, rules)


@blueprint.post("/api/rum")
async def beacon() -> Response:
    receiver: BeaconReceiver = current_app.extensions["rum"]
    settings: Settings = current_app.extensions["settings"]
    client = request_client_ip(settings.trusted_proxies)
    try:
        receiver.admit(client, request.headers.get("Origin"), request.content_length)
        receiver.receive(await request.get_data(cache=False, as_text=False, parse_form_data=False))
    except Rejected as rejected:
        headers = {"Retry-After": "1"} if rejected.status == 429 else None
        raise APIError(
            rejected.status, rejected.reason, _message(rejected.reason), headers
        ) from None
    return Response(status=204)


@blueprint.get("/rum/demo")
async def demo() -> Response:
    settings: Settings = current_app.extensions["settings"]
    if not settings.rum_demo:
        raise APIError(404, "not_found", "No such resource.")
    return Response(_DEMO_PAGE, content_type="text/html; charset=utf-8")


def _message(reason: str) -> str:
    return _MESSAGES.get(reason, "The beacon was refused.")


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
