"""The health probes, answered at the ASGI edge before Quart's request machinery.

Load balancers and orchestrators poll `/api/health`, `/api/health/live` and `/api/health/ready`
many times a second on every instance. As Spring Boot Actuator does with its separate management
server, the answers here do not go through the app's per-request machinery (request context,
routing, session, rate limits, response conversion): a probe costs a fraction of a routed request
(docs/benchmarks.md), and it still answers when a hook misbehaves. Only GET and
HEAD on the exact paths are answered here; anything else (another method, a trailing slash, an
app mounted under a root path) goes on to Quart, where the same routes
(service/health/routes.py) give the same answers, 405s and redirects included. Outside this
edge stay the request record (request id, metrics, log line, as for every request) and, under
`scene-packer serve`, the draining `Connection: close`.
"""

from __future__ import annotations

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from service.health.checks import HealthMonitor
from service.health.routes import ANSWERS, NO_STORE
from service.http.wrappers import json_body
from service.observability.context import bind_route

_HEADERS = [(b"content-type", b"application/json")] + [
    (name.lower().encode(), value.encode()) for name, value in NO_STORE.items()
]


class ProbeEdge:
    def __init__(self, app: ASGIFramework, monitor: HealthMonitor) -> None:
        self.app = app
        self.monitor = monitor

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            answer = ANSWERS.get(path)
            method = scope["method"]
            if answer is not None and (method == "GET" or method == "HEAD"):
                bind_route(path)  # the route template is the path itself
                status, body = await answer(self.monitor)
                payload = json_body(body)
                headers = [*_HEADERS, (b"content-length", b"%d" % len(payload))]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send(
                    {
                        "type": "http.response.body",
                        "body": payload if method == "GET" else b"",
                        "more_body": False,
                    }
                )
                return
        await self.app(scope, receive, send)
