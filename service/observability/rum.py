"""Real-user monitoring: browser beacons (page timings, JS errors, API timings) into metrics.

The beacon endpoint is public, so everything here assumes hostile input: the body is size-capped,
every entry validated, and label values come only from bounded sets (the service's own route
templates, the `RUM_PAGES` allow-list, fixed metric names and error kinds), so no payload can
create a series that is not already possible. A rejection is counted by reason and never a 5xx.
What a browser says in free text (an error message, the culprit of a poor vital) reaches only
the log: scrubbed, cut short, and within a per-process budget of lines.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from collections import OrderedDict
from typing import Any, TypeGuard
from urllib.parse import unquote

import orjson
import structlog
from werkzeug.routing import Map, MapAdapter, Rule

from service.observability.families import OTHER, VITAL_THRESHOLDS, BeaconRejection
from service.observability.metrics import Metrics, method_label
from service.observability.redaction import mask_secrets
from service.settings import Settings

logger = structlog.get_logger("service.rum")

MAX_BODY_BYTES = 16 * 1024
MAX_ENTRIES = 50
MAX_SECONDS = 60.0
MAX_CLS = 10.0
MAX_MESSAGE = 120
MAX_TARGET = 100  # web-vitals cuts its selectors at 100 characters too
# Lines logged from beacons (`frontend_error`, `web_vital_poor`) per process, and per client
# address within it, so that one client cannot use the whole budget: a steady rate and a burst
# each; lines over either are dropped and counted in `frontend_log_lines_dropped_total`.
LOG_LINES_PER_SECOND = 10.0
LOG_LINES_BURST = 100
CLIENT_LOG_LINES_PER_SECOND = 1.0
CLIENT_LOG_LINES_BURST = 20
VITALS = frozenset({"FCP", "LCP", "INP", "TTFB"})
CORE_VITALS = frozenset({"LCP", "CLS", "INP"})  # a poor one is logged with its culprit
# The values the web-vitals library gives these fields; anything else is left out of the log.
NAVIGATION_TYPES = frozenset(
    {"navigate", "reload", "back-forward", "back-forward-cache", "prerender", "restore",
     "soft-navigation"}
)  # fmt: skip
LOAD_STATES = frozenset({"loading", "dom-interactive", "dom-content-loaded", "complete"})
INTERACTION_TYPES = frozenset({"pointer", "keyboard"})
# The culprit of a poor vital as rum.js sends it: beacon field -> log field. Durations and times
# are milliseconds.
ATTRIBUTION_MILLISECONDS = {
    "timeToFirstByte": "time_to_first_byte_ms", "resourceLoadDelay": "resource_load_delay_ms",
    "resourceLoadDuration": "resource_load_duration_ms",
    "elementRenderDelay": "element_render_delay_ms", "time": "largest_shift_time_ms",
    "inputDelay": "input_delay_ms", "processingDuration": "processing_duration_ms",
    "presentationDelay": "presentation_delay_ms",
}  # fmt: skip
ERROR_KINDS = frozenset(
    {
        "Error", "TypeError", "ReferenceError", "SyntaxError", "RangeError", "URIError",
        "EvalError", "AggregateError", "SecurityError", "NetworkError", "AbortError",
        "unhandledrejection",
    }
)  # fmt: skip
# Why a beacon, or an entry of one, is refused: the `reason` label and the client's message.
REJECTIONS: dict[BeaconRejection, str] = {
    "body_too_large": f"The beacon is larger than {MAX_BODY_BYTES // 1024} KB.",
    "malformed": "The beacon is not a JSON object of the documented shape.",
    "too_many_entries": f"The beacon holds more than {MAX_ENTRIES} entries.",
    "unknown_metric": "An entry names a metric this service does not record.",
    "invalid_value": "An entry holds a value out of range.",
    "foreign_origin": "Beacons from this origin are not accepted.",
    "rate_limited": "Too many beacons from this client; retry later.",
}
# Anything around an @, so that an address cut short (`alice.smith@ex`) is still one.
_EMAIL = re.compile(r"[^\s@<>\"'()\[\],;/]+@[^\s<>\"'()\[\],;/]*")
_LONG_NUMBER = re.compile(r"\d{4,}")
# Digits grouped by spaces, dots, dashes or brackets (`123-45-678`, `+44 20 7946 0958`): masked
# when the group holds six digits or more.
_GROUPED_NUMBER = re.compile(r"\+?\d[\d .()-]{4,}\d")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_QUERY = re.compile(r"\?[^\s>]*")  # to the end of a selector's compound: "?" is not CSS
# Long runs of base64/base64url with both letters and digits, or of hex: keys, tokens, ids.
_LONG_TOKEN = re.compile(
    r"(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{20,}={0,2}"
    r"|\b[0-9a-fA-F]{16,}\b"
)


class Rejected(Exception):
    def __init__(self, reason: BeaconRejection, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class BeaconReceiver:
    """Validates one beacon and records it. Knows which page and API templates may be labels."""

    def __init__(self, metrics: Metrics, settings: Settings, app_rules: MapAdapter) -> None:
        self.metrics = metrics
        self.settings = settings
        self._api = app_rules
        self._pages = Map([Rule(page, endpoint=page) for page in settings.rum_pages]).bind("rum")
        self._buckets = _TokenBuckets(settings.rum_rate_per_second, settings.rum_burst)
        self._log_budget = _TokenBuckets(LOG_LINES_PER_SECOND, LOG_LINES_BURST, capacity=1)
        self._client_log_budget = _TokenBuckets(CLIENT_LOG_LINES_PER_SECOND, CLIENT_LOG_LINES_BURST)

    def reject(self, reason: BeaconRejection, status: int) -> Rejected:
        self.metrics.frontend_rejected.inc({"reason": reason})
        return Rejected(reason, status)

    def admit(self, client: str, origin: str | None, length: int | None) -> None:
        """Checks that need no body: origin, rate and declared size."""
        allowed = self.settings.rum_allowed_origins
        if allowed and origin not in allowed:
            raise self.reject("foreign_origin", 403)
        if not self._buckets.take(client):
            raise self.reject("rate_limited", 429)
        if length is not None and length > MAX_BODY_BYTES:
            raise self.reject("body_too_large", 413)

    def receive(self, body: bytes, client: str) -> None:
        """Record what a beacon holds; entries that fail validation are counted and dropped."""
        if len(body) > MAX_BODY_BYTES:
            raise self.reject("body_too_large", 413)
        try:
            beacon = _parse(body)
        except ValueError:
            raise self.reject("malformed", 400) from None
        if not isinstance(beacon, dict):
            raise self.reject("malformed", 400)
        lists = [beacon.get(key, []) for key in ("metrics", "errors", "api")]
        if not all(isinstance(items, list) for items in lists):
            raise self.reject("malformed", 400)
        if sum(len(items) for items in lists) > MAX_ENTRIES:
            raise self.reject("too_many_entries", 413)
        page = self._page(beacon.get("page"))
        metrics, errors, api = lists
        for items, record in (
            (metrics, self._metric),
            (errors, self._error),
            (api, self._api_call),
        ):
            for item in items:
                reason = record(page, item, client) if isinstance(item, dict) else "malformed"
                if reason is not None:
                    self.metrics.frontend_rejected.inc({"reason": reason})

    def _metric(self, page: str, item: dict[str, Any], client: str) -> str | None:
        name, value = item.get("name"), item.get("value")
        if not isinstance(name, str) or (name not in VITALS and name != "CLS"):
            return "unknown_metric"
        if not _valid_number(value):
            return "invalid_value"
        if name == "CLS":
            if value > MAX_CLS:
                return "invalid_value"
            self.metrics.frontend_cls.observe({"page": page}, float(value))
            score = float(value)
        else:
            score = float(value) / 1000
            if score > MAX_SECONDS:
                return "invalid_value"
            self.metrics.frontend_vitals.observe({"metric": name, "page": page}, score)
        poor = score > VITAL_THRESHOLDS[name][1]
        if poor and name in CORE_VITALS and self._may_log("web_vital_poor", client):
            navigation = _one_of(item.get("navigation"), NAVIGATION_TYPES)
            known = {"navigation": navigation} if navigation else {}
            logger.warning(
                "web_vital_poor", page=page, metric=name, value=value, **known,
                **culprit(item.get("attribution")),
            )  # fmt: skip
        return None

    def _error(self, page: str, item: dict[str, Any], client: str) -> str | None:
        kind = item.get("kind")
        message = item.get("message", "")
        if not isinstance(kind, str) or not isinstance(message, str):
            return "malformed"
        label = kind if kind in ERROR_KINDS else OTHER
        self.metrics.frontend_js_errors.inc({"page": page, "kind": label})
        if self._may_log("frontend_error", client):
            logger.warning("frontend_error", page=page, kind=label, message=scrub_message(message))
        return None

    def _api_call(self, page: str, item: dict[str, Any], client: str) -> str | None:
        path, method = item.get("endpoint"), item.get("method", "GET")
        status, duration = item.get("status"), item.get("duration")
        if not isinstance(path, str) or not isinstance(method, str):
            return "malformed"
        if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 599:
            return "invalid_value"
        if not _valid_number(duration):
            return "invalid_value"
        if duration / 1000 > MAX_SECONDS:
            return "invalid_value"
        method = method_label(method.upper())
        endpoint = self._api_template(path, method)
        self.metrics.frontend_api_duration.observe(
            {"endpoint": endpoint, "method": method}, float(duration) / 1000
        )
        if status == 0 or status >= 500:
            self.metrics.frontend_api_errors.inc({"endpoint": endpoint})
        return None

    def _may_log(self, event: str, client: str) -> bool:
        if self._client_log_budget.take(client) and self._log_budget.take(""):
            return True
        self.metrics.frontend_log_dropped.inc({"event": event})
        return False

    def _page(self, path: object) -> str:
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 2048:
            return OTHER
        for adapter in (self._pages, self._api):
            template = _template(adapter, path, "GET")
            if template is not None:
                return template
        return OTHER

    def _api_template(self, path: str, method: str) -> str:
        if not path.startswith("/api/") or len(path) > 2048:
            return OTHER
        return _template(self._api, path, method) or OTHER


def _template(adapter: MapAdapter, path: str, method: str) -> str | None:
    """The route template `path` (query string ignored) matches, or None."""
    try:
        rule, _ = adapter.match(path.split("?", 1)[0], method=method, return_rule=True)
    except Exception:  # not found, wrong method, a redirect or an odd path: not a known route
        return None
    return str(rule.rule)


def culprit(attribution: object) -> dict[str, Any]:
    """The log fields of a poor vital's attribution (rum.js, `culprit`): the element's selector
    and the resource's path scrubbed and cut to `MAX_TARGET`, known words only, durations in
    range; whatever else a beacon puts there is left out."""
    if not isinstance(attribution, dict):
        return {}
    fields: dict[str, Any] = {}
    for key, field in (("target", "target"), ("url", "url_path")):
        text = attribution.get(key)
        if isinstance(text, str) and text:
            if key == "url":  # a path as browsers encode it: %40 is an @
                text = unquote(text.split("?", 1)[0].split("#", 1)[0])
            else:  # a selector; a hostile page may put a path with a query string in it
                text = _QUERY.sub("", text)
            fields[field] = scrub_message(text, MAX_TARGET)
    for key, field, words in (
        ("type", "interaction_type", INTERACTION_TYPES),
        ("loadState", "load_state", LOAD_STATES),
    ):
        word = _one_of(attribution.get(key), words)
        if word is not None:
            fields[field] = word
    for key, field in ATTRIBUTION_MILLISECONDS.items():
        number = attribution.get(key)
        if _valid_number(number) and number <= MAX_SECONDS * 1000:
            fields[field] = round(float(number), 1) + 0.0  # + 0.0: never -0.0
    shift = attribution.get("shift")
    if _valid_number(shift) and shift <= MAX_CLS:
        fields["largest_shift_value"] = round(float(shift), 4) + 0.0
    return fields


def scrub_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """Browser text for the log: short, on one line, without control or invisible formatting
    characters (bidi overrides, zero-width) or lone surrogates, and without URLs, secrets
    (`token=…`, `Bearer …`, JWTs, hashes), long hex or base64 runs, e-mail addresses (whole or
    cut short) or numbers (identifiers, card or phone numbers, grouped or not) a page might have
    put in it."""
    text = " ".join(message[: limit * 4].encode("utf-8", "replace").decode().split())
    text = "".join(c for c in text if unicodedata.category(c) not in _INVISIBLE)
    text = _URL.sub("<url>", text)
    text = mask_secrets(text)
    text = _LONG_TOKEN.sub("<token>", text)
    text = _EMAIL.sub("<email>", text)
    text = _GROUPED_NUMBER.sub(_grouped_number, text)
    text = _LONG_NUMBER.sub("<number>", text)
    return text[:limit]


_INVISIBLE = frozenset({"Cc", "Cf"})  # controls other than whitespace; bidi, zero-width


def _grouped_number(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "<number>" if digits >= 6 else match.group()


def _parse(body: bytes) -> object:
    """The beacon's JSON. orjson refuses a lone UTF-16 surrogate escape (`"\\ud83d"`), which
    browsers' `JSON.stringify` writes for a string cut in the middle of an emoji; such a body is
    read by the standard library instead (its strings are made whole where they are logged).
    Either way: UTF-8 only, no NaN or infinities."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        if not _SURROGATE_ESCAPE.search(body):
            raise
    try:
        return json.loads(body.decode(), parse_constant=_refuse, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _refuse(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is not a finite number")
    return number


def _one_of(value: object, words: frozenset[str]) -> str | None:
    return value if isinstance(value, str) and value in words else None


def _valid_number(value: object) -> TypeGuard[int | float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


class _TokenBuckets:
    """One token bucket per client address, in memory, with at most `capacity` clients kept."""

    def __init__(self, rate: float, burst: int, capacity: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        self._buckets[client] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return allowed
