"""Device cookies: a browser that has signed in as a user keeps its own login budget, so that an
attacker spending the username's budget (LOGIN_LIMIT_PER_USERNAME) cannot lock the user out.

This is OWASP's "Slow Down Online Guessing Attacks with Device Cookies": a successful login
leaves a signed cookie naming the user (by a digest) and a random device id. A login that shows
a valid one for the username it submits is limited per device; any other login shares the
username's budget. An attacker without the user's password has no such cookie, so
exhausting the username's budget stops only logins from devices the user never signed in on.

The cookie is signed with SECRET_KEY by itsdangerous (Quart's own signing library), names the
user by an HMAC keyed with SECRET_KEY (so a cookie does not tell whose it is, even to one who
guesses names), is sent only to the login route, and needs no storage: a new SECRET_KEY makes
every device unknown again, which costs only the per-device budget. The first 32 cookies of that
name a request carries are tried: cookies planted beside the real one (by a sibling domain, say)
hide it only if there are more than 32 of them, sent before it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from itsdangerous import BadSignature, URLSafeSerializer
from quart import Response, g, request

from service.settings import Settings

COOKIE_NAME = "scene_packer_device"
# Long enough to outlive the user's habits; renewed at each login from the device.
COOKIE_DAYS = 365
_SALT = "scene-packer.device"
# Cookies of the name tried per request, at most: each costs a signature check (a few µs), and a
# header can carry thousands.
_TRIED = 32


class DeviceCookies:
    def __init__(self, settings: Settings) -> None:
        self._serializer = URLSafeSerializer(settings.effective_secret_key, salt=_SALT)
        self._user_key = hashlib.sha256((_SALT + settings.effective_secret_key).encode()).digest()
        self._secure = settings.cookie_secure

    def device(self, username: str) -> str | None:
        """The id of the device the request's cookie proves for `username`, or None (no cookie,
        one signed with another key, for another user, or tampered with). Worked out once per
        request: the limits, the log lines and the answer of a login all ask."""
        proofs: dict[str, str | None] = g.setdefault("device_proofs", {})
        if username not in proofs:
            proofs[username] = self._prove(username)
        return proofs[username]

    def _prove(self, username: str) -> str | None:
        for value in request.cookies.getlist(COOKIE_NAME)[:_TRIED]:
            try:
                device, digest = self._serializer.loads(value)
            except (BadSignature, TypeError, ValueError):
                continue
            if (
                isinstance(device, str)
                and isinstance(digest, str)
                and hmac.compare_digest(digest, self._digest(username))
            ):
                return device
        return None

    def remember(self, response: Response, username: str) -> None:
        """Mark the browser as a device of `username` (after a successful login): its id is kept
        when it already was one, so that its budget is not renewed by logging in."""
        device = self.device(username) or secrets.token_urlsafe(16)
        response.set_cookie(
            COOKIE_NAME,
            self._serializer.dumps([device, self._digest(username)]),
            max_age=COOKIE_DAYS * 86400,
            # Sent to the login route only: the path of the login that sets it (root path too).
            path=request.root_path + request.path,
            secure=self._secure,
            httponly=True,
            samesite="Strict",
        )

    def _digest(self, username: str) -> str:
        return hmac.new(self._user_key, username.encode(), hashlib.sha256).hexdigest()[:32]
