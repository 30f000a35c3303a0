"""Browser beacons: `POST /api/rum`, and the demo pages under `GET /rum/demo` that use rum.js."""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel
from quart import Blueprint, Response, request
from quart_schema import document_request, document_response, hide, tag_blueprint
from werkzeug.routing import Map

from service.http.api_docs import NoContent, declare_errors
from service.http.errors import APIError
from service.http.proxy_fix import client_address
from service.observability.metrics import Metrics
from service.observability.rum import REJECTIONS, BeaconReceiver, Rejected
from service.settings import Settings

DEMO = Path(__file__).resolve().parent.parent / "rum_demo"


class VitalEntry(BaseModel):
    name: str  # FCP, LCP, INP, TTFB (milliseconds) or CLS (unitless)
    value: float
    navigation: str | None = None  # web-vitals' navigationType
    # With a poor LCP, CLS or INP: its culprit (docs/frontend.md).
    attribution: dict[str, str | float] | None = None


class ErrorEntry(BaseModel):
    kind: str
    message: str = ""


class ApiEntry(BaseModel):
    endpoint: str
    method: str = "GET"
    status: int
    duration: float  # milliseconds


class Beacon(BaseModel):
    """A browser's beacon (docs/frontend.md), also accepted as text/plain as
    `sendBeacon` sends it. An entry that does not fit is dropped and counted, not refused."""

    page: str | None = None
    metrics: list[VitalEntry] = []
    errors: list[ErrorEntry] = []
    api: list[ApiEntry] = []


def create_blueprint(routes: Map, settings: Settings, metrics: Metrics) -> Blueprint:
    """`POST /api/rum` and the demo page. API timings are labelled by the templates of the app's
    `routes`: the receiver matches against that URL map, which sees routes registered later too
    (werkzeug brings a bound map up to date before each match)."""
    blueprint = Blueprint("rum", __name__)
    tag_blueprint(blueprint, ["frontend monitoring"])
    receiver = BeaconReceiver(metrics, settings, routes.bind("localhost"))

    @blueprint.post("/api/rum")
    @document_request(Beacon)
    @document_response(NoContent, 204)
    @declare_errors(400, 403, 408, 413, 429)
    async def beacon() -> Response:
        """Receive a browser's beacon: page timings and JavaScript errors.

        204 when accepted (an entry that does not fit is dropped and counted); 403 from an
        origin not in `RUM_ALLOWED_ORIGINS`, 429 past the per-address rate."""
        client = client_address(request.scope)
        try:
            receiver.admit(client, request.headers.get("Origin"), request.content_length)
            body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
            receiver.receive(body, client)
        except Rejected as rejected:
            headers = {"Retry-After": "1"} if rejected.status == 429 else None
            raise APIError(
                rejected.status, rejected.reason, REJECTIONS[rejected.reason], headers
            ) from None
        return Response(status=204)

    if settings.rum_demo:  # development only, unless RUM_DEMO_ENABLED: not in the API
        for route, (body, content_type) in _demo_files().items():
            endpoint = "demo" + route.replace(".", "_")  # an endpoint name has no dots
            blueprint.add_url_rule(route, endpoint, hide(_serve(body, content_type)))

    return blueprint


def _demo_files() -> dict[str, tuple[bytes, str]]:
    """service/rum_demo/: `index.html` at /rum/demo, `NAME.html` at /rum/demo/NAME, anything else
    at /rum/demo/FILE. Each page is its own route, so each is its own `page` label."""
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(DEMO.iterdir()):
        if path.suffix == ".html":
            route = "/rum/demo" if path.stem == "index" else f"/rum/demo/{path.stem}"
        else:
            route = f"/rum/demo/{path.name}"
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        files[route] = (path.read_bytes(), content_type)
    return files


def _serve(body: bytes, content_type: str) -> Callable[[], Awaitable[Response]]:
    async def demo() -> Response:
        return Response(body, content_type=content_type)

    return demo
