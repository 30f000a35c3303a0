"""One error type for the API and the handlers that turn every failure into the JSON error shape.

Every error body is `{"error": {"code": ..., "message": ..., "request_id": ...}}`; nothing from an
exception's text or traceback ever reaches a client.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from quart import Quart, Response, jsonify, request
from quart_rate_limiter import RateLimitExceeded
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from service.observability.context import bind_error, current_request_id
from service.unavailable import DependencyUnavailable


class ErrorDetail(BaseModel):
    field: str
    problem: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    request_id: str | None  # None only with REQUEST_OBSERVABILITY off
    reason: str | None = None
    details: list[ErrorDetail] | None = None


class ErrorBody(BaseModel):
    """The shape of every error answer (the OpenAPI document declares it for each status)."""

    error: ErrorInfo


class APIError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.reason = reason  # a finer, stable code within `code` (weak_password: too_short)


_HTTP_CODES = {
    400: ("bad_request", "The request could not be understood."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "You may not do this."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed on this resource."),
    # The client was still sending its body at REQUEST_TIMEOUT (or at Quart's BODY_TIMEOUT, 60 s,
    # when REQUEST_TIMEOUT is longer).
    408: ("body_timeout", "The request body did not arrive in time; send it again."),
    409: ("conflict", "The request conflicts with the current state."),
    413: ("body_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Send the body as application/json."),
    429: ("rate_limited", "Too many requests; retry later."),
    500: ("internal_error", "An internal error occurred."),
    503: ("service_unavailable", "A backing service is unavailable; retry later."),
}


# A backing service that failed is usually back within seconds (a restart, a failover); clients
# and proxies that honour it wait this long before trying again.
RETRY_SOON = {"Retry-After": "1"}


def deadline_exceeded() -> APIError:
    """The answer to a request that outlived REQUEST_TIMEOUT (whatever it was waiting on)."""
    return APIError(
        503,
        "dependency_timeout",
        "The request took too long: a backing service is slow; retry later.",
        RETRY_SOON,
    )


# The rest of a body that did not arrive in time may still be on its way: the connection is
# closed after the answer rather than read on.
_CLOSE = {"Connection": "close"}


def shutting_down() -> APIError:
    """The answer to a request the server could not finish before it stopped: another instance
    (or this one, restarted) will take it."""
    return APIError(
        503,
        "shutting_down",
        "The server is stopping and could not finish this request; retry it.",
        RETRY_SOON,
    )


def body_timeout() -> APIError:
    """The answer to a request whose client was still sending its body at REQUEST_TIMEOUT."""
    return APIError(408, *_HTTP_CODES[408], _CLOSE)


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    headers: dict[str, str] | None,
    reason: str | None = None,
) -> Response:
    bind_error(code)  # for the request_finished line
    body: dict[str, Any] = {"code": code, "message": message, "request_id": current_request_id()}
    if reason is not None:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    response = jsonify({"error": body})
    response.status_code = status
    # An answer about one request (its id is in it): no cache may keep it, a 404 or a 405
    # included, which HTTP lets a cache keep by default.
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Quart) -> None:
    app.register_error_handler(APIError, _handle_api_error)
    app.register_error_handler(DependencyUnavailable, _handle_dependency_unavailable)
    app.register_error_handler(RequestSchemaValidationError, _handle_validation_error)
    app.register_error_handler(HTTPException, _handle_http_exception)


async def _handle_api_error(error: APIError) -> Response:
    return error_response(
        error.status, error.code, error.message, headers=error.headers, reason=error.reason
    )


async def _handle_dependency_unavailable(error: DependencyUnavailable) -> Response:
    code, message = _HTTP_CODES[503]
    return error_response(503, code, error.message or message, headers=RETRY_SOON)


async def _handle_validation_error(error: RequestSchemaValidationError) -> Response:
    if not request.is_json:
        code, message = _HTTP_CODES[415]
        return error_response(415, code, message, headers=None)
    details = None
    inner = error.validation_error
    if hasattr(inner, "errors"):
        # Only where and what: pydantic's `input` would echo the submitted values (passwords),
        # and its message for a body that is not an object names the model class.
        details = [
            {
                "field": ".".join(str(part) for part in item["loc"]),
                "problem": "must be a JSON object" if item["type"] == "model_type" else item["msg"],
            }
            for item in inner.errors()
        ]
    return error_response(
        400, "invalid_body", "The request body is not valid.", details=details, headers=None
    )


async def _handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code, message = _HTTP_CODES.get(status, ("http_error", "The request failed."))
    headers: dict[str, str] = {}
    if isinstance(error, RateLimitExceeded):
        headers["Retry-After"] = str(error.retry_after)
    if status == 408:
        headers.update(_CLOSE)
    if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
        headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return error_response(status, code, message, headers=headers)
